//! `config.toml`: the node's settings, strictly parsed.
//!
//! Unknown keys and bad values are errors that name the file, the line and
//! the key, so an operator's typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use netsky_bus::NodeName;
use serde::{Deserialize, Serialize};

use crate::runtimes::{RuntimeChoice, RuntimeSpec};

/// The largest config file we read.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`
    pub node: NodeSection,
    /// `[constellation]`
    #[serde(default)]
    pub constellation: ConstellationSection,
    /// `[owner]`, read on the root only.
    #[serde(default)]
    pub owner: OwnerSection,
    /// `[runtimes.NAME]`: agent runtimes besides (or replacing) the built-in `claude` and `codex`.
    #[serde(default, deserialize_with = "runtimes_table", skip_serializing_if = "BTreeMap::is_empty")]
    pub runtimes: BTreeMap<String, RuntimeSpec>,
}

/// `[node]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's name in the mesh.
    pub name: NodeName,
    /// The UDP address iroh binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `disabled`, `default`, or a relay URL.
    #[serde(default)]
    pub relay: Relay,
    /// Seconds between health beacons.
    #[serde(default = "default_beacon", deserialize_with = "positive")]
    pub beacon_interval_s: u64,
    /// Seconds between heartbeat ticks.
    #[serde(default = "default_tick", deserialize_with = "positive")]
    pub tick_interval_s: u64,
    /// Find members on the local network by mDNS (multicast on the default
    /// interface), for when their addresses in the charter are out of date.
    #[serde(default)]
    pub mdns: bool,
    /// The read-only status page's TCP address (`127.0.0.1:7480`); none: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// When this node is expected to be up, in its local time (`08:00-23:00`,
    /// may cross midnight); outside it, its silence pages nobody. None: always.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "active_hours",
        serialize_with = "active_hours_text"
    )]
    pub active_hours: Option<ActiveHours>,
}

/// A daily window, in minutes after local midnight: `start..end`, crossing midnight when `end < start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveHours {
    /// Minutes after midnight it starts.
    pub start_min: u16,
    /// Minutes after midnight it ends.
    pub end_min: u16,
}

impl ActiveHours {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<ActiveHours, String> {
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let bad = || format!("active_hours {s:?}: expected HH:MM-HH:MM, like 08:00-23:00");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start_min, end_min) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start_min == end_min {
            return Err(format!("active_hours {s:?}: an empty window (leave the key out for always)"));
        }
        Ok(ActiveHours { start_min, end_min })
    }

    /// Whether minute-of-day `m` (local time) falls inside the window.
    pub fn contains(&self, m: u16) -> bool {
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&m)
        } else {
            m >= self.start_min || m < self.end_min
        }
    }
}

fn active_hours_text<S: serde::Serializer>(a: &Option<ActiveHours>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.serialize_str(&a.to_string()),
        None => s.serialize_none(),
    }
}

impl std::fmt::Display for ActiveHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start_min), hm(self.end_min))
    }
}

fn active_hours<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ActiveHours>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| ActiveHours::parse(&s).map_err(serde::de::Error::custom)).transpose()
}

/// How the node reaches peers beyond direct addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Relay {
    /// Direct addresses only (LAN, tests).
    Disabled,
    /// iroh's public relays and discovery.
    #[default]
    Default,
    /// A self-hosted iroh relay.
    Url(String),
}

impl Relay {
    /// The mesh's relay mode for this one.
    pub fn to_mesh(&self) -> netsky_mesh::Relay {
        match self {
            Relay::Disabled => netsky_mesh::Relay::Disabled,
            Relay::Default => netsky_mesh::Relay::Default,
            Relay::Url(u) => netsky_mesh::Relay::Url(u.clone()),
        }
    }
}

impl std::str::FromStr for Relay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(Relay::Disabled),
            "default" => Ok(Relay::Default),
            u if (u.starts_with("https://") || u.starts_with("http://"))
                && u.len() > 8
                && !u.contains(' ') =>
            {
                Ok(Relay::Url(u.to_string()))
            }
            other => Err(format!("relay {other:?}: expected disabled, default, or an http(s):// relay URL")),
        }
    }
}

impl std::fmt::Display for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Relay::Disabled => f.write_str("disabled"),
            Relay::Default => f.write_str("default"),
            Relay::Url(u) => f.write_str(u),
        }
    }
}

impl Serialize for Relay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Relay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `[constellation]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstellationSection {
    /// How many clones `up` starts by default.
    #[serde(default = "default_clones", deserialize_with = "clones")]
    pub clones: u16,
    /// The agents' runtime: a name under `[runtimes]` (or built in), or a plain argv.
    #[serde(default, deserialize_with = "runtime_choice")]
    pub runtime: RuntimeChoice,
    /// Runtimes of single agents, by agent name (`agent3 = "codex"`), over `runtime`.
    #[serde(default, deserialize_with = "agent_runtimes", skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_runtimes: BTreeMap<String, String>,
    /// Seconds a harvest's check command may run before it is killed.
    #[serde(default = "default_check_timeout", deserialize_with = "positive")]
    pub check_timeout_s: u64,
    /// Seconds an agent in `mcp` delivery may run without its channel server
    /// before its mail is pasted into its pane instead (and the owner told).
    #[serde(default = "default_mcp_server_grace", deserialize_with = "positive")]
    pub mcp_server_grace_s: u64,
    /// The check a harvest runs when `--check` is not given (`sh -c`, in the rebased tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// `tmux -L` socket name; empty means the default server.
    #[serde(default, deserialize_with = "socket_name")]
    pub tmux_socket: String,
    /// Seconds without pane output before a hang is suspected.
    #[serde(default = "default_hang", deserialize_with = "positive")]
    pub hang_after_s: u64,
    /// Restarts within `crash_loop_window_s` that make a crash loop.
    #[serde(default = "default_crash_restarts", deserialize_with = "crash_restarts")]
    pub crash_loop_restarts: u32,
    /// The window, in seconds, in which restarts are counted.
    #[serde(default = "default_crash_window", deserialize_with = "positive")]
    pub crash_loop_window_s: u64,
    /// Seconds a crash-looping agent is left down before the next try.
    #[serde(default = "default_crash_cooldown", deserialize_with = "positive")]
    pub crash_cooldown_s: u64,
    /// How mail reaches the agents: pasted into the pane, or pushed by `netsky mcp serve`
    /// (Claude runtimes only; any other runtime keeps the pane).
    #[serde(default, deserialize_with = "delivery")]
    pub delivery: Delivery,
    /// Agents whose delivery differs from `delivery`: `delivery_for = { agent3 = "mcp" }`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub delivery_for: std::collections::BTreeMap<netsky_bus::AgentName, Delivery>,
}

/// How mail reaches an agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Bracketed paste into the agent's tmux pane, by the daemon's tick.
    #[default]
    Pane,
    /// Channel notifications from the agent's own `netsky mcp serve`.
    Mcp,
}

impl Default for ConstellationSection {
    fn default() -> Self {
        ConstellationSection {
            clones: default_clones(),
            runtime: RuntimeChoice::default(),
            agent_runtimes: BTreeMap::new(),
            check_timeout_s: default_check_timeout(),
            check: None,
            mcp_server_grace_s: default_mcp_server_grace(),
            tmux_socket: String::new(),
            hang_after_s: default_hang(),
            crash_loop_restarts: default_crash_restarts(),
            crash_loop_window_s: default_crash_window(),
            crash_cooldown_s: default_crash_cooldown(),
            delivery: Delivery::Pane,
            delivery_for: Default::default(),
        }
    }
}

/// `[owner]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerSection {
    /// Seconds between re-pages of an unacknowledged incident.
    #[serde(default = "default_repage", deserialize_with = "positive")]
    pub repage_after_s: u64,
    /// Re-pages of one incident at most; then every leg once more, and it stops.
    #[serde(default = "default_max_repages")]
    pub max_repages: u32,
    /// Seconds one leg may take before it counts as failed and the next is tried.
    #[serde(default = "default_leg_timeout", deserialize_with = "positive")]
    pub leg_timeout_s: u64,
    /// A dead-man's switch (Healthchecks.io style) the root requests every
    /// beacon interval, so a dead root is seen from outside; empty = none.
    #[serde(default)]
    pub heartbeat_url: String,
    /// The owner legs, tried in order.
    #[serde(default)]
    pub legs: Vec<Leg>,
    /// Commands the root runs on every tick; each JSON line they print is an
    /// owner message (`{"text": "agent0@laptop: ...", "to": optional}`).
    #[serde(default)]
    pub sources: Vec<Source>,
}

impl Default for OwnerSection {
    fn default() -> Self {
        OwnerSection {
            repage_after_s: default_repage(),
            max_repages: default_max_repages(),
            leg_timeout_s: default_leg_timeout(),
            heartbeat_url: String::new(),
            legs: Vec::new(),
            sources: Vec::new(),
        }
    }
}

/// One way of reaching the owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Leg {
    /// Append JSON lines to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// Run a command (argv template, never a shell).
    Command {
        /// argv; `{subject}` and `{body}` are substituted per argument.
        #[serde(deserialize_with = "argv")]
        argv: Vec<String>,
    },
    /// HTTP POST of the page.
    Webhook {
        /// Where to post (http or https).
        url: String,
        /// The body: the page as JSON (default), Slack's `{"text": ...}`, or ntfy's plain text.
        #[serde(default)]
        body: WebhookBody,
    },
    /// SMTP mail: STARTTLS (or implicit TLS, or none for a local relay), with optional auth.
    Email {
        /// `host:port` of the SMTP server.
        server: String,
        /// Sender address.
        from: String,
        /// Recipient address.
        to: String,
        /// `starttls` (default), `tls` (implicit, port 465), or `none` (a relay on this machine).
        #[serde(default)]
        tls: EmailTls,
        /// The SMTP user, if the server asks for one.
        #[serde(default)]
        username: Option<String>,
        /// A file holding the password (mode 0600), never the password itself.
        #[serde(default)]
        password_file: Option<PathBuf>,
        /// A PEM certificate to trust besides the public roots (a self-hosted server).
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// A desktop notification.
    Desktop {},
    /// A banner on agent0's pane.
    Tmux {},
}

/// A command whose output lines are owner messages (an iMessage reader on macOS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// argv, run without a shell, bounded by `leg_timeout_s`; it should print only what is new.
    #[serde(deserialize_with = "argv")]
    pub argv: Vec<String>,
}

/// How an email leg secures its connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain connection upgraded with STARTTLS; refused if the server cannot.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on this machine.
    None,
}

/// What a webhook leg posts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookBody {
    /// The page as JSON: id, kind, subject, body, origin, ts.
    #[default]
    Json,
    /// `{"text": "subject: body"}`, as Slack's (and Mattermost's) incoming webhooks take.
    Slack,
    /// The body as plain text, the subject as the `Title` header, as ntfy takes.
    Ntfy,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
fn default_beacon() -> u64 {
    30
}
fn default_tick() -> u64 {
    60
}
fn default_clones() -> u16 {
    4
}
fn default_check_timeout() -> u64 {
    600
}

fn runtime_choice<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RuntimeChoice, D::Error> {
    let v = RuntimeChoice::deserialize(d)?;
    match &v {
        RuntimeChoice::Argv(a) if a.first().is_none_or(|p| p.is_empty()) => {
            Err(serde::de::Error::custom("runtime: argv must name a program first"))
        }
        RuntimeChoice::Name(n) if n.is_empty() => {
            Err(serde::de::Error::custom("runtime: expected a runtime's name or an argv"))
        }
        _ => Ok(v),
    }
}

fn agent_runtimes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let v = BTreeMap::<String, String>::deserialize(d)?;
    for k in v.keys() {
        if k.parse::<netsky_bus::AgentName>().is_err() {
            return Err(serde::de::Error::custom(format!(
                "agent_runtimes: {k:?} is not an agent name (agent0, agent1.., agentinfinity)"
            )));
        }
    }
    Ok(v)
}

fn runtimes_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, RuntimeSpec>, D::Error> {
    let v = BTreeMap::<String, RuntimeSpec>::deserialize(d)?;
    for (name, spec) in &v {
        crate::runtimes::check_spec(name, spec).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}
fn default_hang() -> u64 {
    1800
}
fn default_leg_timeout() -> u64 {
    10
}

fn default_max_repages() -> u32 {
    8
}

fn default_repage() -> u64 {
    900
}
fn default_crash_restarts() -> u32 {
    3
}
fn default_crash_window() -> u64 {
    300
}
fn default_crash_cooldown() -> u64 {
    900
}

fn crash_restarts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == 0 || v > 100 {
        return Err(serde::de::Error::custom(format!("{v} is out of range: expected 1 to 100 restarts")));
    }
    Ok(v)
}

/// A `tmux -L` name becomes a file name under tmux's socket directory: keep it plain.
fn socket_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = String::deserialize(d)?;
    let ok = v.len() <= 64 && v.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok || v.starts_with('.') {
        return Err(serde::de::Error::custom(format!(
            "tmux_socket {:?}: expected at most 64 of a-z A-Z 0-9 - _ . (not starting with '.'), or empty",
            v.chars().take(64).collect::<String>()
        )));
    }
    Ok(v)
}

fn delivery<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Delivery, D::Error> {
    let v = String::deserialize(d)?;
    match v.as_str() {
        "pane" => Ok(Delivery::Pane),
        "mcp" => Ok(Delivery::Mcp),
        _ => Err(serde::de::Error::custom(format!(
            "delivery {:?}: expected \"pane\" or \"mcp\"",
            v.chars().take(32).collect::<String>()
        ))),
    }
}

fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 || v > 7 * 24 * 3600 {
        return Err(serde::de::Error::custom(format!("{v} is out of range: expected 1 to 604800 seconds")));
    }
    Ok(v)
}

fn clones<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = u16::deserialize(d)?;
    if v > 999 {
        return Err(serde::de::Error::custom(format!("{v} clones: at most 999 (agent1..agent999)")));
    }
    Ok(v)
}

fn default_mcp_server_grace() -> u64 {
    90
}

fn argv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() || v[0].is_empty() {
        return Err(serde::de::Error::custom("argv must name a program first"));
    }
    Ok(v)
}

impl Config {
    /// A fresh config for `init`.
    pub fn new(name: NodeName, listen: Option<SocketAddr>, relay: Option<Relay>) -> Config {
        Config {
            node: NodeSection {
                name,
                listen: listen.unwrap_or_else(default_listen),
                relay: relay.unwrap_or_default(),
                beacon_interval_s: default_beacon(),
                tick_interval_s: default_tick(),
                mdns: false,
                http: None,
                active_hours: None,
            },
            constellation: ConstellationSection::default(),
            owner: OwnerSection::default(),
            runtimes: BTreeMap::new(),
        }
    }

    /// Parses config text; errors name `path`, the line and the key.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        toml::from_str::<Config>(text).map_err(|e| {
            // Line of the span's start: newlines before it, plus one.
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
            });
            let msg = e.message().trim().replace('\n', " ");
            match line {
                Some(l) => anyhow!("config {}: line {l}: {msg}", path.display()),
                None => anyhow!("config {}: {msg}", path.display()),
            }
        })
    }

    /// Adds a `file` owner leg writing to `pages` to the config at `path`
    /// (the demo and the owner bench show each page from a file).
    pub fn add_file_leg(path: &Path, pages: &Path) -> Result<()> {
        Config::edit(path, |c| c.owner.legs.push(Leg::File { path: pages.to_path_buf() }))
    }

    /// Loads `path`, changes it, and writes it back durably (the demo and benches set up homes so).
    pub fn edit(path: &Path, change: impl FnOnce(&mut Config)) -> Result<()> {
        let mut c = Config::load(path)?;
        change(&mut c);
        crate::home::write_durable(path, c.to_toml().as_bytes())?;
        Ok(())
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let meta = std::fs::metadata(path).with_context(|| format!("config {}", path.display()))?;
        if meta.len() > MAX_CONFIG_BYTES {
            bail!(
                "config {}: {} bytes, larger than any real config ({MAX_CONFIG_BYTES})",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("config {}", path.display()))?;
        Config::parse(path, &text)
    }

    /// The config as TOML text, with a header saying what it is.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("the config serialises: it holds only plain values");
        format!("# netsky node configuration; see `netsky --help` and ARCHITECTURE.md section 9.\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config> {
        Config::parse(Path::new("/h/config.toml"), t)
    }

    #[test]
    fn the_readme_s_configuration_example_parses() {
        let readme = include_str!("../../README.md");
        let section =
            &readme[readme.find("## Configuration").expect("the README has a Configuration section")..];
        let start = section.find("```").expect("a code block") + 3;
        let body = &section[start..];
        let body = &body[body.find('\n').unwrap_or(0) + 1..];
        let block = &body[..body.find("```").expect("the block ends")];
        let c = Config::parse(Path::new("README.md"), block).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
        assert!(!c.owner.legs.is_empty() && c.constellation.check.is_some());
    }

    #[test]
    fn delivery_is_pane_by_default_mcp_when_asked_and_nothing_else() {
        let base = "[node]\nname = \"w\"\n[constellation]\n";
        assert_eq!(parse(base).unwrap().constellation.delivery, Delivery::Pane);
        assert_eq!(
            parse(&format!("{base}delivery = \"mcp\"\n")).unwrap().constellation.delivery,
            Delivery::Mcp
        );
        let err = format!("{:#}", parse(&format!("{base}delivery = \"paste\"\n")).unwrap_err());
        assert!(err.contains("delivery"), "{err}");
        let c =
            parse(&format!("{base}delivery = \"mcp\"\ndelivery_for = {{ agent3 = \"pane\" }}\n")).unwrap();
        let agent3: netsky_bus::AgentName = "agent3".parse().unwrap();
        assert_eq!(c.constellation.delivery_for.get(&agent3), Some(&Delivery::Pane));
        assert!(parse(&format!("{base}delivery_for = {{ agent3x = \"pane\" }}\n")).is_err());
        assert!(parse(&format!("{base}delivery_for = {{ agent3 = \"paste\" }}\n")).is_err());
    }

    #[test]
    fn the_architecture_example_parses() {
        let c = parse(
            r#"
[node]
name = "work"
listen = "0.0.0.0:0"
relay = "default"
beacon_interval_s = 30
tick_interval_s = 60

[constellation]
clones = 4
runtime = ["claude"]
tmux_socket = ""
hang_after_s = 1800

[owner]
repage_after_s = 900
[[owner.legs]]
kind = "file"
path = "/tmp/owner-pages.jsonl"
"#,
        )
        .unwrap();
        assert_eq!(c.node.name.as_str(), "work");
        assert_eq!(c.owner.legs.len(), 1);
    }

    #[test]
    fn runtimes_are_named_configured_and_chosen_per_agent() {
        let c = parse(
            "[node]\nname = \"w\"\n[constellation]\nruntime = \"mine\"\nagent_runtimes = { agent3 = \"codex\" }\n\
             [runtimes.mine]\nargv = [\"my-agent\", \"--prompt\", \"{prompt_file}\"]\nprompt = \"argv\"\n\
             env = { A = \"1\" }\nready_when = \"> \"\n",
        )
        .unwrap();
        assert_eq!(c.constellation.runtime, crate::runtimes::RuntimeChoice::Name("mine".into()));
        assert_eq!(c.constellation.agent_runtimes["agent3"], "codex");
        assert_eq!(c.runtimes["mine"].env["A"], "1");
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back.runtimes, c.runtimes);
    }

    #[test]
    fn a_written_config_reads_back() {
        let c = Config::new("w".parse().unwrap(), None, Some(Relay::Disabled));
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back.node.relay, Relay::Disabled);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_line_and_key() {
        let cases = [
            ("[node]\nname = \"w\"\ncolour = 1\n", "line 3", "colour"),
            ("[node]\nname = \"W!\"\n", "line 2", "node name"),
            ("[node]\nname = \"w\"\nrelay = \"sometimes\"\n", "line 3", "relay"),
            ("[node]\nname = \"w\"\nlisten = \"nowhere\"\n", "line 3", "address"),
            ("[node]\nname = \"w\"\ntick_interval_s = 0\n", "line 3", "out of range"),
            ("[node]\nname = \"w\"\n[constellation]\nclones = 5000\n", "line 4", "999"),
            ("[node]\nname = \"w\"\n[constellation]\nruntime = []\n", "line 4", "argv"),
            ("[node]\nname = \"w\"\n[constellation]\ntmux_socket = \"a/b\"\n", "line 4", "tmux_socket"),
            ("[node]\nname = \"w\"\n[constellation]\ncrash_loop_restarts = 0\n", "line 4", "restarts"),
            ("[node]\nname = \"w\"\n[constellation]\ncrash_cooldown_s = 0\n", "line 4", "out of range"),
            ("[node]\nname = \"w\"\n[constellation]\ncrash_loop = 3\n", "line 4", "crash_loop"),
            ("[node]\nname = \"w\"\n[[owner.legs]]\nkind = \"pigeon\"\n", "line", "pigeon"),
            ("[nod]\nname = \"w\"\n", "line 1", "nod"),
            ("[node]\nname = \"w\"\n[runtimes.\"a b\"]\nargv = [\"x\"]\n", "", "runtime name"),
            ("[node]\nname = \"w\"\n[runtimes.x]\nargv = []\n", "", "argv"),
            ("[node]\nname = \"w\"\n[runtimes.x]\nargv = [\"x\"]\nprompt = \"stdin\"\n", "line 5", "stdin"),
            (
                "[node]\nname = \"w\"\n[constellation]\nagent_runtimes = { bob = \"codex\" }\n",
                "line 4",
                "agent_runtimes",
            ),
            ("", "", "node"),
        ];
        for (text, line, word) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("config /h/config.toml"), "{e}");
            assert!(e.contains(line), "{text:?}: {e}");
            assert!(e.contains(word), "{text:?}: {e}");
        }
    }
}

#[cfg(test)]
mod active_hours_tests {
    use super::ActiveHours;

    #[test]
    fn active_hours_parse_print_and_hold_across_midnight() {
        let day = ActiveHours::parse("08:00-23:00").unwrap();
        assert_eq!(day.to_string(), "08:00-23:00");
        assert!(day.contains(8 * 60) && day.contains(22 * 60 + 59));
        assert!(!day.contains(23 * 60) && !day.contains(7 * 60 + 59));
        let night = ActiveHours::parse("22:00-06:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
        assert!(!night.contains(6 * 60) && !night.contains(12 * 60));
        for bad in ["8-23", "08:00", "24:00-01:00", "08:60-09:00", "08:00-08:00", "08:00-9:00", "x"] {
            assert!(ActiveHours::parse(bad).is_err(), "{bad}");
        }
    }
}
