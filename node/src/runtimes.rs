//! Agent runtimes: what runs in an agent's tmux pane, and how it gets its prompt.
//!
//! A runtime is named: `claude` and `codex` are built in, and
//! `[runtimes.NAME]` in config.toml adds any command (or replaces a built-in
//! of the same name). Which runtime an agent runs is, first to last: the one
//! `netsky agent N --type NAME` (or `clone brief`) chose for it, its entry in
//! `[constellation] agent_runtimes`, then `[constellation] runtime`, which
//! is a runtime's name or, as before runtimes existed, a plain argv.
//!
//! This module only describes and resolves runtimes; starting one is
//! `constellation::agents`, and the first-run settings a runtime needs are
//! `constellation::first_run`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// `[runtimes.NAME]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// The program and its arguments (no shell). `{prompt}` in an argument is
    /// replaced by the rendered prompt's text, `{prompt_file}` by its path.
    pub argv: Vec<String>,
    /// Added to the agent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How the runtime reads its prompt.
    #[serde(default)]
    pub prompt: PromptInput,
    /// Which first-run settings netsky writes before starting it.
    #[serde(default)]
    pub first_run: FirstRun,
    /// Text whose appearance in the pane means the runtime is ready for
    /// input; without it, a pane that shows output and then holds still is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_when: Option<String>,
}

/// How a runtime reads its rendered prompt.
///
/// Standard input is not offered: a pane's input is the terminal the agent
/// itself reads, and a pipe there would take it away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptInput {
    /// Only from the file named by `NETSKY_PROMPT_FILE` (always set).
    #[default]
    Env,
    /// From its argv: `{prompt}` / `{prompt_file}` placeholders; with none,
    /// the prompt's text is added as the last argument.
    Argv,
    /// Pasted into the pane as the first input once the runtime is ready.
    Paste,
}

/// The first-run questions netsky answers ahead, in the runtime's own config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstRun {
    /// Nothing to write.
    #[default]
    None,
    /// Claude Code: onboarding done, workspace trusted, project MCP servers
    /// approved, and the bypass-mode warning skipped when bypass is asked for.
    Claude,
    /// Codex: the workspace trusted in `$CODEX_HOME/config.toml`.
    Codex,
}

/// `[constellation] runtime`: a runtime's name, or (the older form) an argv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RuntimeChoice {
    /// A name under `[runtimes]` or a built-in.
    Name(String),
    /// A plain command: the prompt only through `NETSKY_PROMPT_FILE`.
    Argv(Vec<String>),
}

impl Default for RuntimeChoice {
    fn default() -> Self {
        RuntimeChoice::Name("claude".into())
    }
}

impl std::fmt::Display for RuntimeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeChoice::Name(n) => f.write_str(n),
            RuntimeChoice::Argv(a) => write!(f, "{a:?}"),
        }
    }
}

/// The name a plain-argv `[constellation] runtime` goes by.
pub const COMMAND: &str = "command";

/// The built-in runtimes, by name.
///
/// `claude`: `--dangerously-skip-permissions` (bypass mode: an unattended
/// agent has no one to approve tools) with the prompt appended to the system
/// prompt (`--append-system-prompt`), so the session starts idle and takes
/// its work from envelopes. `codex`: approvals and sandbox bypassed for the
/// same reason, the prompt as its first message.
pub fn builtin(name: &str) -> Option<RuntimeSpec> {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match name {
        "claude" => Some(RuntimeSpec {
            argv: s(&["claude", "--dangerously-skip-permissions", "--append-system-prompt", "{prompt}"]),
            env: BTreeMap::new(),
            prompt: PromptInput::Argv,
            first_run: FirstRun::Claude,
            ready_when: None,
        }),
        "codex" => Some(RuntimeSpec {
            argv: s(&["codex", "--dangerously-bypass-approvals-and-sandbox", "{prompt}"]),
            env: BTreeMap::new(),
            prompt: PromptInput::Argv,
            first_run: FirstRun::Codex,
            ready_when: None,
        }),
        _ => None,
    }
}

/// A runtime chosen for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// Its name (`command` for a plain argv).
    pub name: String,
    /// How it is described.
    pub spec: RuntimeSpec,
}

/// The most argv bytes handed to tmux as they are: tmux refuses a command
/// past about 16 KiB ("command too long"), so a longer one reads its prompt
/// from the file inside the pane instead.
const MAX_TMUX_ARGV: usize = 12 * 1024;

/// `s` single-quoted for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Runtime {
    /// The argv to run, placeholders filled in. Past [`MAX_TMUX_ARGV`] bytes
    /// (a large prompt in an argument) it is `sh -c 'exec ...'` reading the
    /// prompt file in the pane; arguments appended after it still reach the
    /// runtime, after the others ("$@").
    pub fn argv(&self, prompt_file: &Path, prompt_text: &str) -> Vec<String> {
        let direct = self.direct_argv(prompt_file, prompt_text);
        if direct.iter().map(|a| a.len() + 1).sum::<usize>() <= MAX_TMUX_ARGV {
            return direct;
        }
        let file = prompt_file.display().to_string();
        let text = format!("\"$(cat {})\"", sh_quote(&file));
        let mut words: Vec<String> = self
            .spec
            .argv
            .iter()
            .map(|a| {
                // Literal parts quoted, the prompt read from its file, the path as given.
                let parts: Vec<String> =
                    a.split("{prompt}").map(|p| sh_quote(&p.replace("{prompt_file}", &file))).collect();
                parts.join(&text)
            })
            .collect();
        let placed = self.spec.argv.iter().any(|a| a.contains("{prompt}") || a.contains("{prompt_file}"));
        if self.spec.prompt == PromptInput::Argv && !placed {
            words.push(text.clone());
        }
        vec!["sh".into(), "-c".into(), format!("exec {} \"$@\"", words.join(" ")), "netsky-runtime".into()]
    }

    /// The argv with the prompt's text in it, as it is.
    fn direct_argv(&self, prompt_file: &Path, prompt_text: &str) -> Vec<String> {
        let file = prompt_file.display().to_string();
        let mut placed = false;
        let mut argv: Vec<String> = self
            .spec
            .argv
            .iter()
            .map(|a| {
                if a.contains("{prompt}") || a.contains("{prompt_file}") {
                    placed = true;
                }
                a.replace("{prompt_file}", &file).replace("{prompt}", prompt_text)
            })
            .collect();
        if self.spec.prompt == PromptInput::Argv && !placed {
            argv.push(prompt_text.to_string());
        }
        argv
    }

    /// The program, for a PATH check.
    pub fn program(&self) -> &str {
        self.spec.argv.first().map(String::as_str).unwrap_or("")
    }

    /// Whether the runtime runs in bypass-permissions mode (its first-run warning is then skipped too).
    pub fn bypasses_permissions(&self) -> bool {
        self.spec.argv.iter().any(|a| a == "--dangerously-skip-permissions" || a == "bypassPermissions")
    }
}

/// Looks up runtime `name`: `[runtimes]` first, then the built-ins.
pub fn by_name(configured: &BTreeMap<String, RuntimeSpec>, name: &str) -> Result<Runtime> {
    let spec = configured.get(name).cloned().or_else(|| builtin(name));
    match spec {
        Some(spec) => Ok(Runtime { name: name.to_string(), spec }),
        None => {
            let mut known: Vec<&str> = vec!["claude", "codex"];
            known.extend(configured.keys().map(String::as_str).filter(|k| !["claude", "codex"].contains(k)));
            bail!(
                "no runtime named {name:?}: known are {} (add [runtimes.{name}] with an argv to config.toml)",
                known.join(", ")
            )
        }
    }
}

/// The runtime `choice` names (a plain argv is runtime `command`).
pub fn of_choice(configured: &BTreeMap<String, RuntimeSpec>, choice: &RuntimeChoice) -> Result<Runtime> {
    match choice {
        RuntimeChoice::Name(n) => by_name(configured, n),
        RuntimeChoice::Argv(argv) => Ok(Runtime {
            name: COMMAND.into(),
            spec: RuntimeSpec {
                argv: argv.clone(),
                env: BTreeMap::new(),
                prompt: PromptInput::Env,
                first_run: FirstRun::None,
                ready_when: None,
            },
        }),
    }
}

/// Whether `program` names something runnable: a path that exists, or a name found on PATH.
pub fn program_found(program: &str) -> bool {
    if program.is_empty() {
        return false;
    }
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails unless `rt`'s program can be found.
pub fn ensure_found(rt: &Runtime) -> Result<()> {
    if !program_found(rt.program()) {
        bail!(
            "runtime {}: program {:?} is not found (not a path that exists, nor on PATH); install it or fix [runtimes.{}] argv",
            rt.name,
            rt.program(),
            rt.name
        );
    }
    Ok(())
}

/// Checks a `[runtimes.NAME]` table's name and argv (config parsing).
pub fn check_spec(name: &str, spec: &RuntimeSpec) -> Result<(), String> {
    let ok_name = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'));
    if !ok_name {
        return Err(format!("runtime name {name:?}: expected 1 to 32 of a-z A-Z 0-9 - _"));
    }
    if name == COMMAND {
        return Err(format!("runtime name {COMMAND:?} is reserved for a plain-argv [constellation] runtime"));
    }
    if spec.argv.first().is_none_or(|p| p.is_empty()) {
        return Err(format!("runtimes.{name}: argv must name a program first"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_too_long_for_tmux_is_read_from_its_file_in_the_pane_with_the_same_words() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("it's a prompt.md");
        let text = format!("line one\nit's \"quoted\" $HOME `x`\n{}", "y".repeat(20_000));
        std::fs::write(&file, &text).unwrap();
        let spec = RuntimeSpec {
            argv: vec!["printf".into(), "[%s]".into(), "--sys={prompt}!".into(), "{prompt_file}".into()],
            ..builtin("claude").unwrap()
        };
        let rt = Runtime { name: "t".into(), spec };
        let direct = rt.direct_argv(&file, &text);
        let mut argv = rt.argv(&file, &text);
        assert_eq!(&argv[..2], ["sh", "-c"], "{}", argv[2].chars().take(200).collect::<String>());
        assert!(argv.iter().map(String::len).sum::<usize>() < MAX_TMUX_ARGV);
        // Appended arguments (the channel flags) still reach the program, last.
        argv.push("--more".into());
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        let want = std::process::Command::new(&direct[0]).args(&direct[1..]).arg("--more").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&want.stdout));
        // A short prompt stays in the argv as it is.
        assert_eq!(rt.argv(&file, "short"), rt.direct_argv(&file, "short"));
    }

    #[test]
    fn builtins_resolve_and_unknown_names_are_a_clear_error() {
        let none = BTreeMap::new();
        assert_eq!(by_name(&none, "claude").unwrap().program(), "claude");
        assert_eq!(by_name(&none, "codex").unwrap().program(), "codex");
        let e = by_name(&none, "gpt9").unwrap_err().to_string();
        assert!(e.contains("gpt9") && e.contains("claude, codex"), "{e}");
    }

    #[test]
    fn a_configured_runtime_overrides_a_builtin_and_fills_placeholders() {
        let mut c = BTreeMap::new();
        let spec = RuntimeSpec {
            argv: vec!["my-agent".into(), "--prompt-file={prompt_file}".into()],
            env: BTreeMap::new(),
            prompt: PromptInput::Argv,
            first_run: FirstRun::None,
            ready_when: None,
        };
        c.insert("claude".to_string(), spec);
        let rt = by_name(&c, "claude").unwrap();
        assert_eq!(rt.argv(Path::new("/p.md"), "hi"), ["my-agent", "--prompt-file=/p.md"]);
        let rt = by_name(&BTreeMap::new(), "codex").unwrap();
        assert_eq!(rt.argv(Path::new("/p.md"), "hi").last().unwrap(), "hi");
        let plain = of_choice(&BTreeMap::new(), &RuntimeChoice::Argv(vec!["cat".into()])).unwrap();
        assert_eq!(plain.argv(Path::new("/p.md"), "hi"), ["cat"]);
        assert!(by_name(&BTreeMap::new(), "claude").unwrap().bypasses_permissions());
    }

    #[test]
    fn runtime_names_are_plain() {
        let spec = builtin("codex").unwrap();
        assert!(check_spec("ok-name_1", &spec).is_ok());
        for bad in ["", "a b", "../x", COMMAND] {
            assert!(check_spec(bad, &spec).is_err(), "{bad}");
        }
    }
}
