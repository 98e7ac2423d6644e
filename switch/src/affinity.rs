//! Pinning the calling thread to one CPU.

/// Errors from pinning.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("core {core} does not exist (this machine has cores 0 to {max})")]
    NoSuchCore { core: usize, max: usize },
    #[error("cannot pin to core {core}: {source}")]
    SetAffinity {
        core: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Number of CPUs the kernel knows (cores beyond it can never be pinned to).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Checks that `core` can be pinned to, before any thread is started.
pub fn check_core(core: usize) -> Result<(), AffinityError> {
    let n = cpu_count();
    if core >= n || core >= libc::CPU_SETSIZE as usize {
        return Err(AffinityError::NoSuchCore { core, max: n - 1 });
    }
    Ok(())
}

/// Pins the calling thread to `core`.
#[allow(unsafe_code)]
pub fn pin_current_thread(core: usize) -> Result<(), AffinityError> {
    check_core(core)?;
    // SAFETY: cpu_set_t is a plain bit array for which all-zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` < CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid, initialised cpu_set_t and the size passed is its own size;
    // pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(AffinityError::SetAffinity {
            core,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_to_an_existing_core_and_rejects_others() {
        std::thread::spawn(|| pin_current_thread(0).unwrap())
            .join()
            .unwrap();
        let n = cpu_count();
        assert!(matches!(
            check_core(n),
            Err(AffinityError::NoSuchCore { .. })
        ));
        assert!(matches!(
            pin_current_thread(usize::MAX),
            Err(AffinityError::NoSuchCore { .. })
        ));
    }
}
