//! First-run questions: answered ahead in the runtime's own config where a
//! setting can skip them, answered in the pane where none can, and escalated
//! when the pane shows a question nobody here knows.
//!
//! What is written for Claude Code (checked on 2026-12-05 against the
//! settings reference mirrored at brewpirate.github.io/claude-code-docs
//! (permissions, related settings keys: `skipDangerousModePermissionPrompt`
//! skips the confirmation when entering bypassPermissions mode), Claude
//! Code's settings pages and issues (`enableAllProjectMcpServers`,
//! `enabledMcpjsonServers`), and public setup scripts that pre-seed
//! `~/.claude.json` (`hasCompletedOnboarding`, `projects[<dir>].hasTrustDialogAccepted`);
//! `CLAUDE_CONFIG_DIR` moves both files into that directory):
//!
//! - user config (`$CLAUDE_CONFIG_DIR/.claude.json`, else `~/.claude.json`):
//!   `hasCompletedOnboarding = true`; for the agent's working directory,
//!   `projects[<dir>].hasTrustDialogAccepted = true` and
//!   `projects[<dir>].enabledMcpjsonServers` = the servers of `<dir>/.mcp.json`;
//! - user settings (`$CLAUDE_CONFIG_DIR/settings.json`, else `~/.claude/settings.json`):
//!   `skipDangerousModePermissionPrompt = true` only when the runtime runs in bypass mode.
//!
//! For Codex (checked against developers.openai.com/codex/config-basic and
//! the config write-ups that quote it: trust lives in the user config,
//! `[projects."<abs path>"] trust_level = "trusted"`, under `$CODEX_HOME`,
//! default `~/.codex`): that table is appended to `config.toml` when the
//! directory has none. A table already there is left as the user set it.
//!
//! Both Claude files are merged, never replaced: every other key is kept. The
//! development-channel consent ("WARNING: Loading development channels") is
//! asked on every launch and no setting skips it (anthropics/claude-code
//! #42486, #71792): it is in [`KNOWN`] and answered in the pane.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::runtimes::{FirstRun, Runtime};

/// The largest runtime config file netsky will rewrite.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A question a runtime asks at start that netsky answers in the pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownPrompt {
    /// Its name, in events.
    pub name: &'static str,
    /// Every one of these (lower case) appears in the pane's last lines.
    pub needles: &'static [&'static str],
    /// The keys sent (tmux `send-keys` names) to answer it.
    pub keys: &'static [&'static str],
}

/// The questions answered in the pane. Their first options are the ones
/// wanted, and the cursor starts on the first, so Enter takes it; the bypass
/// warning's first option is "No, exit", so it takes Down first.
pub const KNOWN: &[KnownPrompt] = &[
    KnownPrompt {
        name: "claude-development-channels",
        needles: &["loading development channels", "local development"],
        keys: &["Enter"],
    },
    KnownPrompt {
        name: "claude-trust-folder",
        needles: &["do you trust the files in this folder"],
        keys: &["Enter"],
    },
    KnownPrompt {
        name: "claude-trust-project",
        needles: &["a project you created or one you trust"],
        keys: &["Enter"],
    },
    KnownPrompt {
        name: "claude-bypass-mode",
        needles: &["bypass permissions mode", "yes, i accept"],
        keys: &["Down", "Enter"],
    },
    KnownPrompt {
        name: "codex-trust-folder",
        needles: &["allow codex to work in this folder"],
        keys: &["Enter"],
    },
];

/// Signs that the pane waits on a question: a line ending in one of these
/// or holding one of these (lower case) is a prompt no one here knows.
pub const UNKNOWN_SIGNS: &[&str] = &[
    "(y/n)",
    "[y/n]",
    "(yes/no)",
    "[yes/no]",
    "press enter to continue",
    "do you want to",
    "are you sure",
    "enter to confirm",
    "would you like to",
];

/// How many of the pane's last non-empty lines are looked at.
pub const TAIL_LINES: usize = 12;

/// What the pane's last lines show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nothing asked.
    Nothing,
    /// A question in [`KNOWN`].
    Known(&'static KnownPrompt),
    /// Something that looks like a question: its line.
    Unknown(String),
}

/// Looks at the last [`TAIL_LINES`] non-empty lines of `pane` for a question.
pub fn classify(pane: &str) -> Seen {
    let tail: Vec<&str> =
        pane.lines().map(str::trim).filter(|l| !l.is_empty()).rev().take(TAIL_LINES).collect();
    let text = tail.iter().rev().copied().collect::<Vec<_>>().join("\n").to_lowercase();
    if let Some(k) = KNOWN.iter().find(|k| k.needles.iter().all(|n| text.contains(n))) {
        return Seen::Known(k);
    }
    for line in tail.iter().rev() {
        let l = line.to_lowercase();
        if UNKNOWN_SIGNS.iter().any(|s| l.contains(s)) {
            return Seen::Unknown(line.chars().take(200).collect());
        }
    }
    Seen::Nothing
}

/// Writes what lets `rt` start in `workdir` without first-run questions; returns the files written.
pub fn prepare(rt: &Runtime, workdir: &Path, env_home: Option<&Path>) -> Result<Vec<PathBuf>> {
    match rt.spec.first_run {
        FirstRun::None => Ok(Vec::new()),
        FirstRun::Claude => prepare_claude(rt, workdir, env_home),
        FirstRun::Codex => prepare_codex(rt, workdir, env_home).map(|p| p.into_iter().collect()),
    }
}

/// Marks `workdir` trusted in Codex's user config, unless it has a `projects` entry already.
fn prepare_codex(rt: &Runtime, workdir: &Path, env_home: Option<&Path>) -> Result<Option<PathBuf>> {
    let dir = rt
        .spec
        .env
        .get("CODEX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CODEX_HOME").filter(|v| !v.is_empty()).map(PathBuf::from));
    let dir = match (dir, env_home) {
        (Some(d), _) => d,
        (None, Some(h)) => h.join(".codex"),
        (None, None) => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".codex"))
            .context(
                "HOME is not set: cannot find ~/.codex/config.toml (set CODEX_HOME in the runtime's env)",
            )?,
    };
    let path = dir.join("config.toml");
    let file = UserFile::read(&path)?;
    let text = match &file.bytes {
        Some(b) => {
            String::from_utf8(b.clone()).with_context(|| format!("{} is not UTF-8", path.display()))?
        }
        None => String::new(),
    };
    let parsed: toml::Table =
        text.parse().with_context(|| format!("{} is not TOML; netsky will not add to it", path.display()))?;
    let key = workdir.display().to_string();
    if parsed.get("projects").and_then(|p| p.get(&key)).is_some() {
        return Ok(None);
    }
    let quoted = toml::Value::String(key).to_string();
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    let new = format!("{text}{sep}\n[projects.{quoted}]\ntrust_level = \"trusted\"\n");
    // An inline `projects = { .. }` table cannot take a `[projects."dir"]` header after it.
    if new.parse::<toml::Table>().is_err() {
        bail!(
            "{} has its projects in a form netsky cannot add to; trust {} there by hand",
            path.display(),
            workdir.display()
        );
    }
    if file.write(new.as_bytes())? == Written::Raced {
        bail!("{} changed while netsky wrote to it; try again", path.display());
    }
    Ok(Some(path))
}

/// Where Claude Code keeps its user config and user settings for this runtime.
fn claude_files(rt: &Runtime, env_home: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let dir = rt
        .spec
        .env
        .get("CLAUDE_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()).map(PathBuf::from));
    if let Some(d) = dir {
        return Ok((d.join(".claude.json"), d.join("settings.json")));
    }
    let home = match env_home {
        Some(h) => h.to_path_buf(),
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .context("HOME is not set: cannot find Claude Code's ~/.claude.json (set CLAUDE_CONFIG_DIR in the runtime's env)")?,
    };
    Ok((home.join(".claude.json"), home.join(".claude").join("settings.json")))
}

fn prepare_claude(rt: &Runtime, workdir: &Path, env_home: Option<&Path>) -> Result<Vec<PathBuf>> {
    let (user, settings) = claude_files(rt, env_home)?;
    let dir = workdir.display().to_string();
    let servers = mcp_servers(workdir)?;
    update_json(&user, |root| {
        root.insert("hasCompletedOnboarding".into(), Value::Bool(true));
        let projects = object_at(root, "projects");
        let p = object_at(projects, &dir);
        p.insert("hasTrustDialogAccepted".into(), Value::Bool(true));
        if !servers.is_empty() {
            let mut have: Vec<Value> =
                p.get("enabledMcpjsonServers").and_then(Value::as_array).cloned().unwrap_or_default();
            for s in &servers {
                if !have.iter().any(|v| v.as_str() == Some(s)) {
                    have.push(Value::String(s.clone()));
                }
            }
            p.insert("enabledMcpjsonServers".into(), Value::Array(have));
        }
    })?;
    let mut written = vec![user];
    if rt.bypasses_permissions() {
        update_json(&settings, |root| {
            root.insert("skipDangerousModePermissionPrompt".into(), Value::Bool(true));
        })?;
        written.push(settings);
    }
    Ok(written)
}

/// The names of the MCP servers `<dir>/.mcp.json` declares (none without the file).
fn mcp_servers(dir: &Path) -> Result<Vec<String>> {
    let p = dir.join(".mcp.json");
    if !p.exists() {
        return Ok(Vec::new());
    }
    let bytes = crate::home::read_bounded(&p, MAX_CONFIG_BYTES)?;
    let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", p.display()))?;
    Ok(v.get("mcpServers")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// The object under `key` in `m`, made an object if it is missing or not one.
fn object_at<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = m.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(o) => o,
        _ => unreachable!("made an object just above"),
    }
}

/// A file of the runtime's own, as read: where it really is (through a
/// symlink a dotfile manager made), its bytes, and its stamp.
struct UserFile {
    path: PathBuf,
    bytes: Option<Vec<u8>>,
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl UserFile {
    fn read(path: &Path) -> Result<UserFile> {
        // Written where the link points, so the link stays a link.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let before = stamp(&path);
        let bytes = match path.exists() {
            true => Some(crate::home::read_bounded(&path, MAX_CONFIG_BYTES)?),
            false => None,
        };
        Ok(UserFile { stamp: before, path, bytes })
    }

    /// Writes `new` atomically unless it is what the file holds already; refuses
    /// when the runtime itself changed the file since it was read (a live Claude
    /// Code writes its config often): the caller reads it again.
    fn write(&self, new: &[u8]) -> Result<Written> {
        if self.bytes.as_deref() == Some(new) {
            return Ok(Written::Unchanged);
        }
        if stamp(&self.path) != self.stamp {
            return Ok(Written::Raced);
        }
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        crate::home::write_durable(&self.path, new)?;
        Ok(Written::Done)
    }
}

/// A file's modification time and length: changed, it was written meanwhile.
fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

#[derive(Debug, PartialEq, Eq)]
enum Written {
    Done,
    Unchanged,
    Raced,
}

/// Reads the JSON object in `path` (empty if missing), applies `f`, and
/// writes it back atomically if that changed it; read again (three times at
/// most) when the file changed under us.
fn update_json(path: &Path, f: impl Fn(&mut Map<String, Value>)) -> Result<()> {
    for _ in 0..3 {
        let file = UserFile::read(path)?;
        let mut root = match &file.bytes {
            Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    bail!("{} holds JSON that is not an object; netsky will not overwrite it", path.display())
                }
                Err(e) => bail!("{} is not JSON ({e}); netsky will not overwrite it", path.display()),
            },
            None => Map::new(),
        };
        let before = root.clone();
        f(&mut root);
        if root == before && file.bytes.is_some() {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&Value::Object(root)).context("runtime config to JSON")?;
        if file.write(&bytes)? != Written::Raced {
            return Ok(());
        }
    }
    bail!("{} kept changing while netsky wrote to it; try again", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_prompts_are_matched_unknown_ones_flagged_and_chatter_left_alone() {
        let dev =
            "WARNING: Loading development channels\n\n❯ 1. I am using this for local development\n  2. Exit";
        assert!(matches!(classify(dev), Seen::Known(k) if k.name == "claude-development-channels"));
        assert!(matches!(classify("Continue with setup? (y/N)"), Seen::Unknown(l) if l.contains("setup")));
        assert_eq!(classify("ready>\n"), Seen::Nothing);
        assert_eq!(classify(""), Seen::Nothing);
    }

    #[test]
    fn a_symlinked_user_config_stays_a_link_and_an_unchanged_one_is_not_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("dotfiles-claude.json");
        std::fs::write(&real, r#"{"theme": "dark"}"#).unwrap();
        let link = d.path().join(".claude.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let set = |root: &mut Map<String, Value>| {
            root.insert("hasCompletedOnboarding".into(), Value::Bool(true));
        };
        update_json(&link, set).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        let v: Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
        assert_eq!((v["theme"].as_str(), v["hasCompletedOnboarding"].as_bool()), (Some("dark"), Some(true)));
        // Again: nothing to change, nothing written (the inode stays).
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&real).unwrap().ino();
        update_json(&link, set).unwrap();
        assert_eq!(std::fs::metadata(&real).unwrap().ino(), ino);
    }

    #[test]
    fn a_codex_config_with_inline_projects_is_refused_not_broken() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("codex");
        std::fs::create_dir_all(&cfg).unwrap();
        let text = "projects = { \"/elsewhere\" = { trust_level = \"trusted\" } }\n";
        std::fs::write(cfg.join("config.toml"), text).unwrap();
        let mut rt = crate::runtimes::by_name(&Default::default(), "codex").unwrap();
        rt.spec.env.insert("CODEX_HOME".into(), cfg.display().to_string());
        let err = prepare(&rt, &d.path().join("work"), None).unwrap_err();
        assert!(format!("{err:#}").contains("by hand"), "{err:#}");
        assert_eq!(std::fs::read_to_string(cfg.join("config.toml")).unwrap(), text);
    }

    #[test]
    fn codex_gets_the_workspace_trusted_once_and_other_tables_kept() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("my \"work\"");
        let cfg = d.path().join("codex");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("config.toml"), "# mine\nmodel = \"m\"").unwrap();
        let mut rt = crate::runtimes::by_name(&Default::default(), "codex").unwrap();
        rt.spec.env.insert("CODEX_HOME".into(), cfg.display().to_string());
        assert_eq!(prepare(&rt, &work, None).unwrap().len(), 1);
        assert!(prepare(&rt, &work, None).unwrap().is_empty(), "a second start adds nothing");
        let text = std::fs::read_to_string(cfg.join("config.toml")).unwrap();
        assert!(text.starts_with("# mine\nmodel = \"m\"\n"), "{text}");
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["projects"][&work.display().to_string()]["trust_level"].as_str(), Some("trusted"));
    }

    #[test]
    fn claude_settings_are_merged_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join(".mcp.json"), r#"{"mcpServers":{"netsky":{"command":"netsky"}}}"#).unwrap();
        let cfg = d.path().join("cfg");
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join(".claude.json"), r#"{"theme":"dark","projects":{"/x":{"a":1}}}"#).unwrap();
        let mut rt = crate::runtimes::by_name(&Default::default(), "claude").unwrap();
        rt.spec.env.insert("CLAUDE_CONFIG_DIR".into(), cfg.display().to_string());
        let written = prepare(&rt, &work, None).unwrap();
        assert_eq!(written.len(), 2);
        let user: Value = serde_json::from_slice(&std::fs::read(cfg.join(".claude.json")).unwrap()).unwrap();
        assert_eq!(user["theme"], "dark");
        assert_eq!(user["projects"]["/x"]["a"], 1);
        assert_eq!(user["hasCompletedOnboarding"], true);
        let p = &user["projects"][work.display().to_string()];
        assert_eq!(p["hasTrustDialogAccepted"], true);
        assert_eq!(p["enabledMcpjsonServers"][0], "netsky");
        let s: Value = serde_json::from_slice(&std::fs::read(cfg.join("settings.json")).unwrap()).unwrap();
        assert_eq!(s["skipDangerousModePermissionPrompt"], true);
        std::fs::write(cfg.join(".claude.json"), "not json").unwrap();
        assert!(prepare(&rt, &work, None).is_err(), "a damaged file is refused, not replaced");
    }
}
