//! Pinning the calling thread to one CPU, and keeping every other thread off the workers'.

/// Errors from pinning.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("core {core} does not exist (this machine has cores 0 to {max})")]
    NoSuchCore { core: usize, max: usize },
    #[error("cannot pin to core {core}: {error}")]
    SetAffinity { core: usize, error: std::io::Error },
}

/// Number of CPUs online (cores beyond it can never be pinned to). Not the calling
/// thread's affinity: [`keep_off_cores`] narrows that on purpose before workers pin.
#[allow(unsafe_code)]
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
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
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Restricts the calling thread, and so every thread it starts afterwards, to the CPUs it
/// may run on now minus `cores`: the control plane, the vhost-user event threads and the
/// runtime then never preempt a busy-polling worker. Returns the CPUs kept, or an empty list
/// (nothing changed) if `cores` covers them all.
#[allow(unsafe_code)]
pub fn keep_off_cores(cores: &[usize]) -> Result<Vec<usize>, AffinityError> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is a plain bit array for which all-zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Err(AffinityError::SetAffinity {
            core: cores.first().copied().unwrap_or(0),
            error: std::io::Error::last_os_error(),
        });
    }
    let limit = libc::CPU_SETSIZE as usize;
    for &c in cores.iter().filter(|&&c| c < limit) {
        // SAFETY: c < CPU_SETSIZE, so CPU_CLR stays inside `set`.
        unsafe { libc::CPU_CLR(c, &mut set) };
    }
    // SAFETY: i < CPU_SETSIZE, inside `set`.
    let kept: Vec<usize> = (0..limit)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect();
    if kept.is_empty() {
        return Ok(kept);
    }
    // SAFETY: as above; `set` is non-empty.
    if unsafe { libc::sched_setaffinity(0, size, &set) } != 0 {
        return Err(AffinityError::SetAffinity {
            core: kept[0],
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(kept)
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

    /// The CPUs the calling thread may run on, from /proc ("0-3,5" lists).
    fn allowed_cpus() -> Vec<usize> {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        let mut out = Vec::new();
        for part in list.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
        }
        out
    }

    #[test]
    fn threads_started_after_keep_off_cores_avoid_those_cores() {
        std::thread::spawn(|| {
            let before = allowed_cpus();
            // The last core: pinning onto it afterwards must not be refused as beyond the
            // (narrowed) CPU count, a bug the first version had.
            let last = *before.last().unwrap();
            let kept = keep_off_cores(&[last]).unwrap();
            if before.len() == 1 {
                assert!(kept.is_empty(), "the only core cannot be left");
                assert_eq!(allowed_cpus(), before);
                return;
            }
            assert_eq!(kept, before[..before.len() - 1].to_vec());
            // A thread started now inherits the mask; a worker can still pin onto the core.
            std::thread::spawn(move || {
                assert_eq!(allowed_cpus(), kept);
                pin_current_thread(last).unwrap();
                assert_eq!(allowed_cpus(), vec![last]);
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
}
