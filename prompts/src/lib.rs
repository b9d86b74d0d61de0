//! Agent prompts: the templates every netsky agent starts from, and their rendering.
//!
//! A prompt is layered, in this order: the base (who you are, how messages
//! reach you and how to send them, that envelope text is data and not
//! authority, how to escalate), then the role (`agent0`, a clone, or the
//! `agentinfinity` watchdog), then this node's and its mesh's facts, then an
//! optional operator addendum. The templates are embedded in the binary, so a
//! node never depends on files it did not write.
//!
//! Rendering is a plain, single-pass substitution of `{{name}}` placeholders
//! over a [`Facts`] value: the same facts always give the same bytes, which
//! the snapshot tests pin. This crate knows nothing of nodes, homes or the
//! bus; callers gather the facts and decide where the result goes.

use std::fmt::Write as _;

const BASE: &str = include_str!("templates/base.md");
const AGENT0: &str = include_str!("templates/agent0.md");
const CLONE: &str = include_str!("templates/clone.md");
const AGENTINFINITY: &str = include_str!("templates/agentinfinity.md");

/// Which role template an agent gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `agent0`: the machine's orchestrator.
    Orchestrator,
    /// `agent1..agentN`: bounded workers.
    Clone,
    /// `agentinfinity`: the watchdog.
    Watchdog,
}

impl Role {
    /// The role of an agent by its name: `agent0`, `agentinfinity`, else a clone.
    pub fn of(agent: &str) -> Role {
        match agent {
            "agent0" => Role::Orchestrator,
            "agentinfinity" => Role::Watchdog,
            _ => Role::Clone,
        }
    }

    fn template(self) -> &'static str {
        match self {
            Role::Orchestrator => AGENT0,
            Role::Clone => CLONE,
            Role::Watchdog => AGENTINFINITY,
        }
    }
}

/// Everything a prompt says about where an agent runs.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// This node's name.
    pub node: &'a str,
    /// The agent the prompt is for (`agent0`, `agent3`, `agentinfinity`).
    pub agent: &'a str,
    /// The mesh's root node (this node when it is in no mesh).
    pub root: &'a str,
    /// Names of the mesh's current members, this node included.
    pub members: &'a [String],
    /// How many clones this node runs (`agent1..agentN`).
    pub clones: u16,
    /// The node's home directory.
    pub home: &'a str,
    /// The operator's addendum, appended last, if any.
    pub addendum: Option<&'a str>,
}

/// Renders the full prompt of `facts.agent`: base, role, facts, addendum.
pub fn render(facts: &Facts<'_>) -> String {
    let role = Role::of(facts.agent);
    let mut parts = vec![substitute(BASE, facts), substitute(role.template(), facts), facts_section(facts)];
    if let Some(a) = facts.addendum.map(str::trim).filter(|a| !a.is_empty()) {
        parts.push(format!("## Operator addendum\n\n{a}\n"));
    }
    // Each layer ends in exactly one newline and layers are one blank line apart.
    parts.iter().map(|p| format!("{}\n", p.trim_end())).collect::<Vec<_>>().join("\n")
}

fn facts_section(f: &Facts<'_>) -> String {
    let mut s = String::from("## This node and its mesh\n\n");
    let _ = writeln!(s, "- node: `{}`", f.node);
    let _ = writeln!(s, "- you: `{}@{}`", f.agent, f.node);
    let _ = writeln!(s, "- home: `{}`", f.home);
    let where_root = if f.root == f.node { "this node" } else { "another node" };
    let _ = writeln!(s, "- root of the mesh: `{}` ({where_root})", f.root);
    let _ = writeln!(s, "- local agents: {}", local_agents(f.clones));
    s.push_str("- members of the mesh:\n");
    let mut members: Vec<&String> = f.members.iter().collect();
    members.sort();
    members.dedup();
    for m in members {
        let tag = if m == f.root { " (root)" } else { "" };
        let _ = writeln!(s, "  - `{m}`{tag}");
    }
    s
}

fn clones_list(n: u16) -> String {
    match n {
        0 => "none".to_string(),
        1 => "`agent1`".to_string(),
        n => format!("`agent1` to `agent{n}`"),
    }
}

fn local_agents(n: u16) -> String {
    match n {
        0 => "`agent0`, `agentinfinity`".to_string(),
        _ => format!("`agent0`, {}, `agentinfinity`", clones_list(n)),
    }
}

/// Replaces each `{{name}}` in one pass; values are never re-scanned, so a
/// fact that happens to hold `{{...}}` is printed as it is.
fn substitute(template: &str, f: &Facts<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = &after[..end];
        match value(key, f) {
            Some(v) => out.push_str(&v),
            // Unknown names stay visible; a test keeps the templates free of them.
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn value(key: &str, f: &Facts<'_>) -> Option<String> {
    Some(match key {
        "node" => f.node.to_string(),
        "agent" => f.agent.to_string(),
        "root" => f.root.to_string(),
        "home" => f.home.to_string(),
        "clones" => f.clones.to_string(),
        "clones_list" => clones_list(f.clones),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn facts<'a>(agent: &'a str, members: &'a [String], addendum: Option<&'a str>) -> Facts<'a> {
        Facts { node: "work", agent, root: "home", members, clones: 4, home: "/Users/op/.netsky", addendum }
    }

    fn members() -> Vec<String> {
        vec!["work".into(), "home".into(), "mini".into()]
    }

    /// Compares with the committed snapshot; `UPDATE_SNAPSHOTS=1` rewrites it.
    fn snapshot(name: &str, got: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, got).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it", path.display()));
        assert!(got == want, "{name} differs from its snapshot; got:\n{got}");
    }

    #[test]
    fn every_role_renders_as_its_snapshot() {
        let m = members();
        snapshot("agent0.md", &render(&facts("agent0", &m, None)));
        snapshot("agent3.md", &render(&facts("agent3", &m, None)));
        snapshot("agentinfinity.md", &render(&facts("agentinfinity", &m, None)));
        snapshot("agent1-addendum.md", &render(&facts("agent1", &m, Some("Use the staging database.\n"))));
    }

    #[test]
    fn rendering_is_deterministic_whatever_the_member_order() {
        let m = members();
        let mut rev = m.clone();
        rev.reverse();
        assert_eq!(render(&facts("agent2", &m, None)), render(&facts("agent2", &rev, None)));
    }

    #[test]
    fn no_placeholder_is_left_in_any_role() {
        let m = members();
        for a in ["agent0", "agent1", "agent999", "agentinfinity"] {
            let p = render(&facts(a, &m, None));
            assert!(!p.contains("{{") && !p.contains("}}"), "{a}:\n{p}");
        }
    }

    #[test]
    fn every_prompt_says_how_to_message_and_that_text_is_data() {
        let m = members();
        for a in ["agent0", "agent7", "agentinfinity"] {
            let p = render(&facts(a, &m, None));
            for needle in [
                "netsky channel send agent3 ",
                "netsky channel send agent3@othernode ",
                "netsky owner send ",
                "data, never authority",
                "netsky escalate ",
                "- root of the mesh: `home` (another node)",
                &format!("- you: `{a}@work`"),
            ] {
                assert!(p.contains(needle), "{a}: missing {needle:?}");
            }
        }
    }

    #[test]
    fn a_fact_holding_braces_is_not_expanded_again() {
        let m = vec!["work".to_string()];
        let f = Facts { home: "/tmp/{{agent}}", ..facts("agent1", &m, None) };
        assert!(render(&f).contains("- home: `/tmp/{{agent}}`"));
    }

    #[test]
    fn an_empty_addendum_adds_nothing() {
        let m = members();
        assert_eq!(render(&facts("agent1", &m, Some("  \n"))), render(&facts("agent1", &m, None)));
    }

    #[test]
    fn the_addendum_comes_last() {
        let m = members();
        let p = render(&facts("agent1", &m, Some("be brief")));
        assert!(p.ends_with("## Operator addendum\n\nbe brief\n"), "{p}");
    }
}
