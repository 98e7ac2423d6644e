//! Manual pages from the binaries' own argument definitions (clap_mangen), with the sections
//! clap knows nothing of: ENVIRONMENT, SIGNALS, EXIT STATUS, FILES, SEE ALSO.

use std::io;
use std::path::{Path, PathBuf};

use roff::{bold, roman, Roff};

/// A section of a manual page that clap cannot derive.
pub struct Section {
    pub title: &'static str,
    /// Paragraph before the entries, if any.
    pub intro: &'static str,
    /// (term, its description), each shown as a tagged paragraph.
    pub entries: &'static [(&'static str, &'static str)],
}

/// The page of `cmd`: clap_mangen's sections (name, synopsis, description, options,
/// subcommands), then `extra`, then the version.
pub fn page(cmd: clap::Command, extra: &[Section]) -> io::Result<String> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::default();
    for section in extra {
        roff.control("SH", [section.title]);
        if !section.intro.is_empty() {
            roff.text([roman(section.intro)]);
        }
        for (term, text) in section.entries {
            roff.control("TP", []);
            roff.text([bold(*term)]);
            roff.text([roman(*text)]);
        }
    }
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    String::from_utf8(out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `cmd`'s page (with `extra`) and one page per subcommand, at any depth
/// (`vringctl-port.1`, `vringctl-port-add.1`: the names the main page's SUBCOMMANDS section
/// refers to), into `dir`. Returns the files written.
pub fn write_all(cmd: clap::Command, extra: &[Section], dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let main = dir.join(format!("{}.1", cmd.get_name()));
    std::fs::write(&main, page(cmd.clone(), extra)?)?;
    written.push(main);
    fn subcommands(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            out.push(clap_mangen::Man::new(sub.clone()).generate_to(dir)?);
            subcommands(sub, dir, out)?;
        }
        Ok(())
    }
    subcommands(&cmd, dir, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("tool")
            .about("Does things.")
            .version("1.0")
            .arg(
                clap::Arg::new("verbose")
                    .long("verbose")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(
                clap::Command::new("port")
                    .about("Ports.")
                    .subcommand(clap::Command::new("add").about("Adds a port.")),
            )
    }

    const EXTRA: &[Section] = &[Section {
        title: "EXIT STATUS",
        intro: "What it returns.",
        entries: &[("0", "success"), ("1", "a failure")],
    }];

    #[test]
    fn the_page_has_the_extra_sections_before_the_version() {
        let page = page(cmd(), EXTRA).unwrap();
        let exit = page.find(".SH \"EXIT STATUS\"").expect(&page);
        let version = page.find(".SH VERSION").expect(&page);
        assert!(
            page.find(".SH OPTIONS").unwrap() < exit && exit < version,
            "{page}"
        );
        assert!(page.contains("What it returns."), "{page}");
        assert!(page.contains(".TP\n\\fB1\\fR\na failure"), "{page}");
    }

    #[test]
    fn every_page_the_main_page_names_is_written() {
        let dir = std::env::temp_dir().join(format!("manpage-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = write_all(cmd(), EXTRA, &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tool.1", "tool-port.1", "tool-port-add.1"]);
        let main = std::fs::read_to_string(dir.join("tool.1")).unwrap();
        assert!(main.contains("tool\\-port(1)"), "{main}");
        assert!(main.contains("EXIT STATUS"), "{main}");
        let add = std::fs::read_to_string(dir.join("tool-port-add.1")).unwrap();
        assert!(add.contains(".TH tool-port-add 1"), "{add}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
