//! Supervision of this node's daemon: the shim in the home, the launchd
//! agent (macOS) or systemd user unit (Linux) that runs it, and the last
//! known good binary the shim falls back to.
//!
//! Both supervisors share one flow: [`Install`] writes the shim and the
//! supervisor's file (only what changed), then asks the supervisor to load
//! it; [`FileState`] compares what is installed with what `install` would
//! write now, so a hand edit or a moved binary is reported, not guessed.

pub mod launchd;
pub mod lkg;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use netsky_launchd::Supervised;
use serde::Serialize;

use crate::home::Home;
use crate::node::Node;

/// The most a supervisor file of ours can sensibly hold.
const MAX_FILE: u64 = 64 * 1024;
/// How long a `launchctl` or `systemctl` call may take.
pub const MANAGER_TIMEOUT: Duration = Duration::from_secs(15);

/// What supervises this node's daemon, for `node` run by the netsky binary running now.
pub fn supervised(node: &Node) -> Result<Supervised> {
    let exe = std::env::current_exe().context("cannot find the running netsky binary")?;
    let binary = exe.canonicalize().unwrap_or(exe);
    if binary == netsky_launchd::lkg_path(node.home.root()) {
        bail!(
            "this is the last known good copy ({}); run install with the netsky binary you want live",
            binary.display()
        );
    }
    let home = node.home.root().canonicalize().unwrap_or_else(|_| node.home.root().to_path_buf());
    Ok(Supervised { node: node.config.node.name.to_string(), binary, home, path: daemon_path() })
}

/// A PATH for the daemon: this shell's, plus where tmux and git live on
/// Macs (Homebrew) and Linux, so a login session's PATH is not needed.
fn daemon_path() -> String {
    let mut dirs: Vec<String> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(str::to_owned)
        .collect();
    for d in ["/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|x| x == d) && (Path::new(d).is_dir() || d == "/usr/bin" || d == "/bin") {
            dirs.push(d.to_string());
        }
    }
    dirs.join(":")
}

/// Writes the shim into the home (mode 0755) unless it is there already, unchanged.
pub fn write_shim(home: &Home) -> Result<bool> {
    let path = netsky_launchd::shim_path(home.root());
    if read_if_there(&path)?.as_deref() == Some(netsky_launchd::SHIM.as_bytes()) {
        return Ok(false);
    }
    std::fs::create_dir_all(path.parent().unwrap_or(home.root()))
        .with_context(|| format!("cannot create {}", path.display()))?;
    crate::home::write_durable(&path, netsky_launchd::SHIM.as_bytes())?;
    set_mode(&path, 0o755)?;
    Ok(true)
}

/// Whether the home's shim is the one this binary would write.
pub fn shim_current(home: &Home) -> bool {
    read_if_there(&netsky_launchd::shim_path(home.root()))
        .ok()
        .flatten()
        .is_some_and(|b| b == netsky_launchd::SHIM.as_bytes())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// A file's bytes, or `None` when it does not exist.
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => crate::home::read_bounded(path, MAX_FILE).map(Some),
    }
}

/// Removes a file that may be absent; returns whether it was there.
fn remove_if_there(file: &Path) -> Result<bool> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot remove {}", file.display()))),
    }
}

/// This platform's supervisor: `launchd` on macOS, `systemd` elsewhere.
pub fn platform() -> &'static str {
    if cfg!(target_os = "macos") { "launchd" } else { "systemd" }
}

/// The status of this platform's supervision of `node`.
pub fn status(node: &Node) -> Result<Status> {
    if cfg!(target_os = "macos") { launchd::status(node) } else { systemd::status(node) }
}

/// The user's home directory, where launch agents and user units live.
fn user_home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("$HOME is not set: cannot find the user's launch agents or units")
}

/// The supervisor's file as installed, against what `install` would write now.
#[derive(Debug, Serialize)]
pub struct FileState {
    /// Where the file lives.
    pub file: PathBuf,
    /// It exists.
    pub installed: bool,
    /// It is exactly what `install` would write now for the binary it names.
    pub current: bool,
    /// How it differs: lines (or keys) only in the installed file start with `+`, missing ones with `-`.
    pub edits: Vec<String>,
    /// The live binary the installed file names.
    pub binary: Option<PathBuf>,
    /// That binary exists (false: it moved or was deleted since install).
    pub binary_exists: Option<bool>,
}

impl FileState {
    /// Reads the file at `file` and compares it with what `make` writes for
    /// the binary the file names (so a file installed by another netsky
    /// build is not taken for a hand edit).
    fn read(
        s: &Supervised,
        file: PathBuf,
        make: impl Fn(&Supervised) -> Result<Vec<u8>>,
        binary_of: impl Fn(&[u8]) -> Option<PathBuf>,
    ) -> Result<FileState> {
        let installed = read_if_there(&file)?;
        let named = Supervised {
            binary: installed.as_deref().and_then(&binary_of).unwrap_or_else(|| s.binary.clone()),
            ..s.clone()
        };
        Ok(FileState::compare(file, installed.as_deref(), &make(&named)?, binary_of))
    }

    /// Compares `installed` (if any) with `expected`; `binary_of` finds the binary an installed file names.
    fn compare(
        file: PathBuf,
        installed: Option<&[u8]>,
        expected: &[u8],
        binary_of: impl Fn(&[u8]) -> Option<PathBuf>,
    ) -> FileState {
        let Some(installed) = installed else {
            return FileState {
                file,
                installed: false,
                current: false,
                edits: vec![],
                binary: None,
                binary_exists: None,
            };
        };
        let binary = binary_of(installed);
        let binary_exists = binary.as_ref().map(|b| b.is_file());
        let (have, want) = (String::from_utf8_lossy(installed), String::from_utf8_lossy(expected));
        let mut edits: Vec<String> = have
            .lines()
            .filter(|l| !want.lines().any(|w| w == *l))
            .map(|l| format!("+ {}", l.trim()))
            .collect();
        edits.extend(
            want.lines().filter(|l| !have.lines().any(|h| h == *l)).map(|l| format!("- {}", l.trim())),
        );
        FileState { file, installed: true, current: installed == expected, edits, binary, binary_exists }
    }

    /// One line for people: installed or not, current or how it differs.
    pub fn summary(&self) -> String {
        if !self.installed {
            return format!("not installed ({} does not exist)", self.file.display());
        }
        let mut s = format!("installed at {}", self.file.display());
        if self.binary_exists == Some(false) {
            let b = self.binary.as_deref().map(|b| b.display().to_string()).unwrap_or_default();
            s.push_str(&format!(
                "; it names {b}, which no longer exists (moved or deleted): run install again"
            ));
        } else if !self.current {
            s.push_str(&format!(
                "; edited since install (or written by another netsky version): {} line(s) differ; run install again to rewrite it",
                self.edits.len()
            ));
        }
        s
    }
}

/// What `install` did.
#[derive(Debug, Serialize)]
pub struct Install {
    /// launchd or systemd.
    pub supervisor: &'static str,
    /// The supervisor's file.
    pub file: PathBuf,
    /// The shim it runs.
    pub shim: PathBuf,
    /// The live binary the shim runs first.
    pub binary: PathBuf,
    /// The file was written (false: it was already current).
    pub written: bool,
    /// The shim was written.
    pub shim_written: bool,
    /// Commands run, in order.
    pub ran: Vec<String>,
    /// Commands the user must run (the supervisor could not be reached).
    pub todo: Vec<String>,
}

/// What `uninstall` did.
#[derive(Debug, Serialize)]
pub struct Uninstall {
    /// launchd or systemd.
    pub supervisor: &'static str,
    /// The supervisor's file.
    pub file: PathBuf,
    /// It was there and is now removed (false: nothing was installed).
    pub removed: bool,
    /// Commands run, in order.
    pub ran: Vec<String>,
    /// Commands the user must run.
    pub todo: Vec<String>,
}

/// What `status` found.
#[derive(Debug, Serialize)]
pub struct Status {
    /// launchd or systemd.
    pub supervisor: &'static str,
    /// The file against what install would write.
    #[serde(flatten)]
    pub state: FileState,
    /// The supervisor has it loaded (launchd) or active (systemd); null when it cannot be asked.
    pub loaded: Option<bool>,
    /// The home's shim is the one this netsky writes.
    pub shim_current: bool,
    /// The home holds a last known good binary.
    pub lkg_present: bool,
}

impl Status {
    /// The status of `s`'s supervision, given its file's state and whether it is loaded.
    fn of(supervisor: &'static str, s: &Supervised, state: FileState, loaded: Option<bool>) -> Status {
        let home = Home::resolve(Some(s.home.clone())).ok();
        Status {
            supervisor,
            state,
            loaded,
            shim_current: home.as_ref().is_some_and(shim_current),
            lkg_present: s.lkg().is_file(),
        }
    }

    /// Lines for people.
    pub fn text(&self) -> String {
        let loaded = match self.loaded {
            Some(true) => "loaded and running",
            Some(false) => "not loaded",
            None => "cannot ask the supervisor here",
        };
        format!(
            "{}: {}\n  {loaded}\n  shim {}; last known good binary {}",
            self.supervisor,
            self.state.summary(),
            if self.shim_current { "current" } else { "missing or out of date (install writes it)" },
            if self.lkg_present {
                "present"
            } else {
                "absent (the daemon makes one after running healthily)"
            },
        )
    }
}

/// Runs a supervisor command, bounded; returns whether it succeeded and its output.
fn manager(argv: &[&str]) -> Result<(bool, String)> {
    let out =
        crate::proc::run_bounded(std::process::Command::new(argv[0]).args(&argv[1..]), MANAGER_TIMEOUT)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text.trim().to_string()))
}

/// A command line as a user would type it (for `ran` and `todo`).
fn shown(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| {
            if a.contains([' ', '"', '\'', '$']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `bytes` to a supervisor's file unless it already holds them; returns whether it wrote.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if read_if_there(path)?.as_deref() == Some(bytes) {
        return Ok(false);
    }
    let dir = path.parent().context("a supervisor file needs a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::home::write_durable(path, bytes)?;
    set_mode(path, 0o644)?;
    Ok(true)
}
