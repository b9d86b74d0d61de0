//! The mesh protocol against hostile and broken input, in one process.
//!
//! Every test binds real iroh endpoints on loopback: one or more [`Mesh`]
//! nodes, each in its own temporary home, and where a test needs to send
//! what no honest node would, a raw endpoint that speaks the wire by hand
//! with a member's (or a stranger's) key. Waits poll for a condition with a
//! deadline and print what they saw when it passes; nothing asserts a sleep.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::endpoint::{Connection, NetReportConfig, PortmapperConfig, presets};
use iroh::{Endpoint, EndpointAddr, RelayMode};
use netsky_bus::{AgentName, Envelope, Kind, NodeName};
use netsky_keys::{NodeId, SecretKey};
use netsky_mesh::wire::{
    ALPN_JOIN, ALPN_MESH, Ack, FRAME_TIMEOUT, Frame, JoinRequest, JoinResponse, MAX_BATCH, MAX_FRAME,
    Outcome, read_frame, request, send_request, write_frame,
};
use netsky_mesh::{
    AgentCheck, Charter, CharterMember, EventSink, Mesh, MeshConfig, MeshEvent, MeshPaths, Relay,
    SignedCharter, Ticket, TicketBody, charter_file,
};
use tempfile::TempDir;

/// Generous bound for anything that should happen within milliseconds.
const SOON: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers: events, waits, homes, charters, envelopes, raw endpoints.

/// Every event a node emitted, in order.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<MeshEvent>>>);

impl Events {
    fn sink(&self) -> EventSink {
        let v = self.0.clone();
        Arc::new(move |e| v.lock().unwrap().push(e))
    }
    fn all(&self) -> Vec<MeshEvent> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, f: impl Fn(&MeshEvent) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
    fn protocol_errors(&self, needle: &str) -> usize {
        self.count(|e| matches!(e, MeshEvent::ProtocolError { reason, .. } if reason.contains(needle)))
    }
    fn charter_refusals(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                MeshEvent::CharterRefused { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }
}

/// Polls `f` until it returns `Ok` or `within` passes; panics with the last thing seen.
async fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn name(s: &str) -> NodeName {
    s.parse().unwrap()
}

/// Every agent exists except `agent9`.
fn all_but_agent9() -> AgentCheck {
    let nine: AgentName = "agent9".parse().unwrap();
    Arc::new(move |a| a != nine)
}

/// A charter of mesh "home" signed by `mk`.
fn charter(
    mk: &SecretKey,
    epoch: u64,
    root: &str,
    members: &[(&str, NodeId, Vec<SocketAddr>)],
) -> SignedCharter {
    Charter {
        mesh: "home".into(),
        epoch,
        root: name(root),
        members: members
            .iter()
            .map(|(n, id, addrs)| CharterMember { name: name(n), node_id: *id, addrs: addrs.clone() })
            .collect(),
        revoked: vec![],
        issued: netsky_bus::format_ts(time::OffsetDateTime::now_utc()),
        mesh_key: mk.public(),
    }
    .sign(mk)
    .unwrap()
}

/// Stores `c` as the charter of `home`, as `netsky mesh init`/`join` would.
fn store_charter(home: &Path, c: &SignedCharter) {
    let paths = MeshPaths::new(home);
    let l = charter_file::lock(&paths).unwrap();
    charter_file::store(&paths, &l, c).unwrap();
}

fn charter_bytes(home: &Path) -> Vec<u8> {
    std::fs::read(MeshPaths::new(home).charter()).unwrap()
}

async fn start(home: &Path, node: &str, key: &SecretKey, events: &Events) -> Mesh {
    start_with(home, node, key, events, Relay::Disabled).await
}

async fn start_with(home: &Path, node: &str, key: &SecretKey, events: &Events, relay: Relay) -> Mesh {
    Mesh::start(MeshConfig {
        home: home.to_path_buf(),
        name: name(node),
        key: key.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        relay,
        mdns: false,
        answers: None,
        beacons: None,
        agent_exists: all_but_agent9(),
        events: events.sink(),
    })
    .await
    .unwrap()
}

/// A signed message; `from` and `to` are `agent@node`.
fn env(key: &SecretKey, from: &str, to: &str, text: &str) -> Envelope {
    Envelope::new(key, Kind::Message, from.parse().unwrap(), to.parse().unwrap(), text, None).unwrap()
}

/// Envelope files in one lifecycle folder of an agent's mailbox.
fn mailbox_files(home: &Path, agent: &str, folder: &str) -> Vec<String> {
    envelope_files(&home.join("channels/agent").join(agent).join(folder))
}

/// The envelope files in `dir` (not temp files or spares), sorted.
fn envelope_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn inbox(home: &Path, agent: &str) -> Vec<String> {
    mailbox_files(home, agent, "inbox")
}

/// A bare endpoint with `key`, loopback only: the hostile (or merely hand-driven) side.
async fn raw_endpoint(key: &SecretKey) -> Endpoint {
    Endpoint::builder(presets::Minimal)
        .secret_key(key.clone())
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

fn addr_of(mesh: &Mesh) -> EndpointAddr {
    mesh.addrs().into_iter().fold(EndpointAddr::new(mesh.id()), |a, s| a.with_ip_addr(s))
}

async fn dial(ep: &Endpoint, mesh: &Mesh, alpn: &[u8]) -> Connection {
    tokio::time::timeout(SOON, ep.connect(addr_of(mesh), alpn))
        .await
        .expect("the handshake finishes on loopback")
        .expect("the handshake succeeds")
}

/// Pushes envelope bytes on a new stream and returns the acks.
async fn push(conn: &Connection, envs: Vec<Vec<u8>>) -> Vec<Ack> {
    let n = envs.len();
    match request(conn, &Frame::Push { envs }, FRAME_TIMEOUT, "server").await.unwrap() {
        Frame::Acks { acks } => {
            assert_eq!(acks.len(), n, "one ack per envelope");
            acks
        }
        other => panic!("a push was answered with {other:?}"),
    }
}

/// Reads what the server sends back on a stream it gave up on: nothing, then the end.
async fn assert_no_answer(recv: &mut iroh::endpoint::RecvStream, case: &str) {
    match tokio::time::timeout(SOON, recv.read_to_end(MAX_FRAME)).await {
        Err(_) => panic!("{case}: the server neither answered nor closed the stream"),
        Ok(Ok(bytes)) => assert!(bytes.is_empty(), "{case}: the server answered {} bytes", bytes.len()),
        // A reset stream is also no answer.
        Ok(Err(_)) => {}
    }
}

fn stored(acks: &[Ack]) -> bool {
    acks.iter().all(|a| a.outcome == Outcome::Stored)
}

/// A server node (the root, no mesh key) and raw members that dial it by hand.
struct Fixture {
    server: Mesh,
    home: TempDir,
    events: Events,
    /// (name, key) of every raw member, in the order asked for.
    members: Vec<(String, SecretKey)>,
}

impl Fixture {
    async fn new(raw_members: &[&str]) -> Fixture {
        let home = TempDir::new().unwrap();
        let mk = SecretKey::generate();
        let sk = SecretKey::generate();
        let members: Vec<(String, SecretKey)> =
            raw_members.iter().map(|n| (n.to_string(), SecretKey::generate())).collect();
        let mut list = vec![("server", sk.public(), vec![])];
        list.extend(members.iter().map(|(n, k)| (n.as_str(), k.public(), vec![])));
        store_charter(home.path(), &charter(&mk, 1, "server", &list));
        let events = Events::default();
        let server = start(home.path(), "server", &sk, &events).await;
        Fixture { server, home, events, members }
    }

    fn key(&self, member: &str) -> &SecretKey {
        &self.members.iter().find(|(n, _)| n == member).unwrap().1
    }

    /// A connection on the mesh protocol from `member`'s own key.
    async fn connect(&self, member: &str) -> (Endpoint, Connection) {
        let ep = raw_endpoint(self.key(member)).await;
        let conn = dial(&ep, &self.server, ALPN_MESH).await;
        (ep, conn)
    }

    /// A fresh, valid envelope from `member` to agent1 of the server.
    fn good(&self, member: &str, text: &str) -> Envelope {
        env(self.key(member), &format!("agent0@{member}"), "agent1@server", text)
    }

    fn home(&self) -> &Path {
        self.home.path()
    }
}

/// Two running nodes, alpha (root) and beta, both holding epoch 1 of one charter.
struct Pair {
    ha: TempDir,
    hb: TempDir,
    ka: SecretKey,
    mk: SecretKey,
    ea: Events,
    eb: Events,
    a: Mesh,
    b: Mesh,
    c1: SignedCharter,
}

impl Pair {
    async fn new() -> Pair {
        let (ha, hb) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let (ka, kb, mk) = (SecretKey::generate(), SecretKey::generate(), SecretKey::generate());
        let (ea, eb) = (Events::default(), Events::default());
        let a = start(ha.path(), "alpha", &ka, &ea).await;
        let b = start(hb.path(), "beta", &kb, &eb).await;
        // Addresses are known only after binding: now write the charter both hold.
        let c1 = charter(&mk, 1, "alpha", &[("alpha", a.id(), a.addrs()), ("beta", b.id(), b.addrs())]);
        store_charter(ha.path(), &c1);
        store_charter(hb.path(), &c1);
        a.kick();
        b.kick();
        Pair { ha, hb, ka, mk, ea, eb, a, b, c1 }
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// 1. Delivery through the outbox.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_deliver_an_envelope_through_the_outbox_and_the_sender_forgets_it_on_ack() {
    let p = Pair::new().await;
    let (ha, hb, ka, ea, eb, a) = (&p.ha, &p.hb, &p.ka, &p.ea, &p.eb, &p.a);

    let e = env(ka, "agent0@alpha", "agent1@beta", "hello over the mesh");
    let outbox = MeshPaths::new(ha.path()).outbox();
    netsky_bus::write_durable(&outbox, &e.file_name(), &e.to_json()).unwrap();
    a.kick();

    let file = e.file_name();
    wait_until("the envelope in beta's inbox and gone from alpha's outbox", SOON, || {
        let (inb, out) = (inbox(hb.path(), "agent1"), envelope_files(&outbox).len());
        if inb == [file.clone()] && out == 0 { Ok(()) } else { Err(format!("inbox {inb:?}, outbox {out}")) }
    })
    .await;
    let sent = std::fs::read(MeshPaths::new(ha.path()).sent().join(&file)).unwrap();
    assert_eq!(Envelope::from_json(&sent).unwrap(), e, "the acked copy is kept in sent/");
    let held = std::fs::read(hb.path().join("channels/agent/agent1/inbox").join(&file)).unwrap();
    assert_eq!(Envelope::from_json(&held).unwrap(), e, "the stored copy is the signed envelope");
    wait_until("alpha's Acked event", SOON, || {
        let acked = ea.count(|x| matches!(x, MeshEvent::Acked { env, duplicate: false } if env.id == e.id));
        if acked == 1 { Ok(()) } else { Err(format!("{:?}", ea.all())) }
    })
    .await;
    assert_eq!(
        eb.count(|x| matches!(x, MeshEvent::Received { peer, item } if peer == "alpha"
            && item.ack.outcome == Outcome::Stored)),
        1
    );
    p.shutdown().await;
}

/// Members that tell the root where they are at once end up in one new
/// charter, not one each: a charter per hello, pushed to every member, made
/// a mesh joining at once do work in the square of its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_addresses_heard_together_are_recorded_in_one_charter() {
    const MEMBERS: usize = 6;
    let root_home = TempDir::new().unwrap();
    let (rk, mk) = (SecretKey::generate(), SecretKey::generate());
    let ev = Events::default();
    let root = start(root_home.path(), "alpha", &rk, &ev).await;
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let (h, k, e) = (TempDir::new().unwrap(), SecretKey::generate(), Events::default());
        let m = start(h.path(), &format!("m{i}"), &k, &e).await;
        members.push((h, m, e));
    }
    // The charter knows where the root is and nothing of the members: each must say hello.
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let mut list = vec![("alpha", root.id(), root.addrs())];
    list.extend(members.iter().zip(&names).map(|((_, m, _), n)| (n.as_str(), m.id(), vec![])));
    let c1 = charter(&mk, 1, "alpha", &list);
    store_charter(root_home.path(), &c1);
    for (h, _, _) in &members {
        store_charter(h.path(), &c1);
    }
    // The root holds the mesh key, as `mesh init` leaves it.
    let key_path = MeshPaths::new(root_home.path()).mesh_key();
    std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
    netsky_keys::save_key_file(&key_path, mk.clone()).unwrap();
    root.kick();
    for (_, m, _) in &members {
        m.kick();
    }
    let held = wait_until("every member's addresses in the root's charter", SOON, || {
        let c = SignedCharter::from_json(&charter_bytes(root_home.path())).map_err(|e| e.to_string())?;
        let missing: Vec<_> = members
            .iter()
            .filter(|(_, m, _)| c.charter.member_by_id(&m.id()).is_none_or(|x| x.addrs != m.addrs()))
            .map(|(_, m, _)| m.id())
            .collect();
        if missing.is_empty() {
            Ok(c)
        } else {
            Err(format!("epoch {}, missing {missing:?}", c.charter.epoch))
        }
    })
    .await;
    assert!(
        held.charter.epoch <= 3,
        "{MEMBERS} hellos made epoch {} (one charter per hello would be {})",
        held.charter.epoch,
        1 + MEMBERS
    );
    // And every member follows it.
    for (h, _, _) in &members {
        wait_until("the member holds the root's charter", SOON, || {
            let c = SignedCharter::from_json(&charter_bytes(h.path())).map_err(|e| e.to_string())?;
            if c.charter.epoch >= held.charter.epoch {
                Ok(())
            } else {
                Err(format!("epoch {}", c.charter.epoch))
            }
        })
        .await;
    }
    for (_, m, _) in members {
        m.shutdown().await;
    }
    root.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. The door.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_at_the_door_before_any_application_byte() {
    let f = Fixture::new(&["alpha"]).await;
    let stranger = SecretKey::generate();
    let ep = raw_endpoint(&stranger).await;
    // The client side completes its handshake; the server closes right after its own.
    let refusal = match tokio::time::timeout(SOON, ep.connect(addr_of(&f.server), ALPN_MESH)).await.unwrap() {
        Err(e) => e.to_string(),
        Ok(conn) => {
            let e = env(&stranger, "agent0@stranger", "agent1@server", "let me in");
            let res = request(&conn, &Frame::Push { envs: vec![e.to_json()] }, SOON, "server").await;
            let err = res.expect_err("a non-member gets no answer").to_string();
            let closed = tokio::time::timeout(SOON, conn.closed()).await.unwrap().to_string();
            format!("{err} / {closed}")
        }
    };
    assert!(refusal.contains("not a member"), "{refusal}");
    let id = stranger.public().to_string();
    wait_until("a ConnectionRefused event", SOON, || {
        let n = f.events.count(
            |e| matches!(e, MeshEvent::ConnectionRefused { peer, reason } if *peer == id && reason.contains("not a member")),
        );
        if n >= 1 { Ok(()) } else { Err(format!("{:?}", f.events.all())) }
    })
    .await;
    // Nothing it sent reached the protocol handler.
    let handled = f.events.count(|e| {
        matches!(
            e,
            MeshEvent::Received { .. } | MeshEvent::ProtocolError { .. } | MeshEvent::CharterRefused { .. }
        )
    });
    assert_eq!(handled, 0, "{:?}", f.events.all());
    assert!(inbox(f.home(), "agent1").is_empty());
    // A member on the same server still gets in.
    let (_ep, conn) = f.connect("alpha").await;
    assert!(stored(&push(&conn, vec![f.good("alpha", "members pass").to_json()]).await));
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_reaches_the_join_protocol_and_a_bad_ticket_is_refused() {
    let f = Fixture::new(&[]).await;
    let stranger = SecretKey::generate();
    let ep = raw_endpoint(&stranger).await;
    let conn = dial(&ep, &f.server, ALPN_JOIN).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = JoinRequest { ticket: "netsky1notaticket".into(), name: "stranger".into(), addrs: vec![] };
    write_frame(&mut send, &req, "server").await.unwrap();
    let resp: JoinResponse = read_frame(&mut recv, MAX_FRAME, SOON, "server").await.unwrap();
    match resp {
        JoinResponse::Refused { reason } => assert!(reason.contains("ticket"), "{reason}"),
        other => panic!("a bad ticket was answered with {other:?}"),
    }
    conn.close(0u32.into(), b"done");
    assert_eq!(f.events.count(|e| matches!(e, MeshEvent::JoinRefused { .. })), 1);
    assert_eq!(f.events.count(|e| matches!(e, MeshEvent::ConnectionRefused { .. })), 0);
    f.server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. Broken frames.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_frame_ends_its_connection_and_the_push_behind_it_is_not_stored() {
    let f = Fixture::new(&["alpha"]).await;
    let garbage_body = [0xC8u8, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    let mut malformed = (garbage_body.len() as u32).to_be_bytes().to_vec();
    malformed.extend_from_slice(&garbage_body);
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[7u8; 10]);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("an oversized length header", (2 * 1024 * 1024u32).to_be_bytes().to_vec(), "over the"),
        ("a frame cut short", truncated, "truncated frame:"),
        ("a header cut short", vec![0, 0], "truncated frame header"),
        ("a body that is not postcard", malformed, "malformed frame"),
    ];
    for (i, (case, bytes, want)) in cases.into_iter().enumerate() {
        let (_ep, conn) = f.connect("alpha").await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        // The server may stop the stream before all of it is written; that is its right.
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
        // A good push already on its way behind the broken one.
        let behind = vec![f.good("alpha", &format!("behind {case}")).to_json()];
        // Opening it may already fail: the server is free to close the connection first.
        let behind = send_request(&conn, &Frame::Push { envs: behind }, "server").await;
        assert_no_answer(&mut recv, case).await;
        wait_until(&format!("a ProtocolError for {case}"), SOON, || {
            if f.events.protocol_errors(want) == 1 { Ok(()) } else { Err(format!("{:?}", f.events.all())) }
        })
        .await;
        if let Ok(mut behind) = behind {
            let answer: Result<Frame, _> = read_frame(&mut behind, MAX_FRAME, SOON, "server").await;
            assert!(answer.is_err(), "{case}: the push behind was answered: {answer:?}");
        }
        tokio::time::timeout(SOON, conn.closed()).await.expect("the server closes the connection");
        // A new connection carries a good push.
        let (_ep2, conn) = f.connect("alpha").await;
        let acks = push(&conn, vec![f.good("alpha", &format!("after {case}")).to_json()]).await;
        assert!(stored(&acks), "{case}: {acks:?}");
        assert_eq!(inbox(f.home(), "agent1").len(), i + 1, "{case}: only the push after it");
    }
    // A well-formed frame that is not a request is refused in words, not dropped.
    let (_ep, conn) = f.connect("alpha").await;
    let resp = request(&conn, &Frame::Ok { note: "hi".into() }, SOON, "server").await.unwrap();
    assert!(matches!(resp, Frame::Refused { ref reason } if reason.contains("not a request")), "{resp:?}");
    assert!(conn.close_reason().is_none(), "the connection survived: {:?}", conn.close_reason());
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_dropped_after_the_frame_timeout_with_its_connection() {
    let f = Fixture::new(&["alpha"]).await;
    let (_ep, conn) = f.connect("alpha").await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Two bytes of a header, then silence: the stream exists on the server, the frame never comes.
    send.write_all(&[0, 0]).await.unwrap();
    let opened = Instant::now();
    wait_until("the server to give up on the silent stream", FRAME_TIMEOUT + SOON, || {
        if f.events.protocol_errors("no whole frame") == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", f.events.all()))
        }
    })
    .await;
    assert!(
        opened.elapsed() >= FRAME_TIMEOUT - Duration::from_secs(1),
        "gave up early: {:?}",
        opened.elapsed()
    );
    assert_no_answer(&mut recv, "a silent stream").await;
    tokio::time::timeout(SOON, conn.closed()).await.expect("the server closes the connection");
    let (_ep2, conn) = f.connect("alpha").await;
    let acks = push(&conn, vec![f.good("alpha", "after the silence").to_json()]).await;
    assert!(stored(&acks), "{acks:?}");
    f.server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. Bad envelopes in a well-formed push.

fn refused_kind(a: &Ack) -> Option<(&str, &str)> {
    match &a.outcome {
        Outcome::Refused { kind, reason } => Some((kind.as_str(), reason.as_str())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_envelopes_in_a_push_are_refused_one_by_one_and_good_ones_beside_them_are_stored() {
    let f = Fixture::new(&["alpha", "beta"]).await;
    let (_ep, conn) = f.connect("alpha").await;
    let a = f.key("alpha");
    let outsider = SecretKey::generate();
    let good1 = f.good("alpha", "good one");
    let mut tampered = env(a, "agent0@alpha", "agent1@server", "as signed");
    tampered.text = "as tampered".into();
    // Signed by member beta, pushed over alpha's connection.
    let forged = env(f.key("beta"), "agent0@beta", "agent1@server", "beta's words through alpha");
    let elsewhere = env(a, "agent0@alpha", "agent1@beta", "for another node");
    let no_agent = env(a, "agent0@alpha", "agent9@server", "nobody home");
    let stranger = env(&outsider, "agent0@outsider", "agent1@server", "not in the charter");
    let good2 = f.good("alpha", "good two");
    let batch: Vec<Vec<u8>> = vec![
        good1.to_json(),
        tampered.to_json(),
        forged.to_json(),
        elsewhere.to_json(),
        no_agent.to_json(),
        stranger.to_json(),
        b"{not an envelope".to_vec(),
        good2.to_json(),
    ];
    let acks = push(&conn, batch).await;
    let want: [(&str, Option<(&str, &str)>); 8] = [
        ("good1", None),
        ("tampered", Some(("bad-signature", "does not verify"))),
        ("forged", Some(("forged-origin", "pushed by"))),
        ("elsewhere", Some(("wrong-recipient", "not to this node"))),
        ("no agent", Some(("wrong-recipient", "no agent agent9"))),
        ("stranger", Some(("unknown-origin", "not a member"))),
        ("garbage", Some(("unparsable", ""))),
        ("good2", None),
    ];
    for ((case, want), ack) in want.iter().zip(&acks) {
        match (want, refused_kind(ack)) {
            (None, _) => assert_eq!(ack.outcome, Outcome::Stored, "{case}: {ack:?}"),
            (Some((kind, words)), Some((k, r))) => {
                assert_eq!(k, *kind, "{case}: {r}");
                assert!(r.contains(words), "{case}: {r}");
            }
            (Some(_), None) => panic!("{case} was not refused: {ack:?}"),
        }
    }
    // Acks name what they answer: the envelope id, or the position of unparsable bytes.
    assert_eq!(acks[0].id, good1.id.to_string());
    assert_eq!(acks[2].id, forged.id.to_string());
    assert_eq!(acks[6].id, "#6");
    let mut expect = vec![good1.file_name(), good2.file_name()];
    expect.sort();
    assert_eq!(inbox(f.home(), "agent1"), expect, "only the good ones are stored");
    assert!(inbox(f.home(), "agent9").is_empty());
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_duplicate_is_acknowledged_as_duplicate_and_never_written_twice() {
    let f = Fixture::new(&["alpha"]).await;
    let (_ep, conn) = f.connect("alpha").await;
    let one = f.good("alpha", "once");
    let two = f.good("alpha", "twice in one batch");
    assert!(stored(&push(&conn, vec![one.to_json()]).await));
    let path = f.home().join("channels/agent/agent1/inbox").join(one.file_name());
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    // Again alone, again twice, and beside a new one that also appears twice.
    let acks = push(&conn, vec![one.to_json(), two.to_json(), one.to_json(), two.to_json()]).await;
    let outcomes: Vec<Outcome> = acks.into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::Stored, Outcome::Duplicate, Outcome::Duplicate]);
    let mut expect = vec![one.file_name(), two.file_name()];
    expect.sort();
    assert_eq!(inbox(f.home(), "agent1"), expect);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), written, "the first copy is untouched");
    // Once delivered (the lifecycle is a rename), a replay is still a duplicate and the inbox stays empty.
    let delivered = f.home().join("channels/agent/agent1/delivered");
    for e in [&one, &two] {
        let name = e.file_name();
        std::fs::rename(f.home().join("channels/agent/agent1/inbox").join(&name), delivered.join(&name))
            .unwrap();
    }
    let acks = push(&conn, vec![one.to_json(), two.to_json()]).await;
    assert!(acks.iter().all(|a| a.outcome == Outcome::Duplicate), "{acks:?}");
    assert!(inbox(f.home(), "agent1").is_empty(), "{:?}", inbox(f.home(), "agent1"));
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_the_batch_limit_is_refused_whole_and_ends_the_connection() {
    let f = Fixture::new(&["alpha"]).await;
    let (_ep, conn) = f.connect("alpha").await;
    let envs: Vec<Vec<u8>> = (0..=MAX_BATCH).map(|i| f.good("alpha", &format!("n{i}")).to_json()).collect();
    let mut first = send_request(&conn, &Frame::Push { envs }, "server").await.unwrap();
    // A second push already on its way behind the refused one.
    let next = vec![f.good("alpha", "behind the refused push").to_json()];
    // (Opening it may already fail: the server is free to close the connection first.)
    let behind = send_request(&conn, &Frame::Push { envs: next }, "server").await;
    let resp: Frame = read_frame(&mut first, MAX_FRAME, SOON, "server").await.unwrap();
    assert!(matches!(resp, Frame::Refused { ref reason } if reason.contains("at most 128")), "{resp:?}");
    // The connection ends: nothing behind a failed push is stored ahead of it.
    if let Ok(mut behind) = behind {
        let answer: Result<Frame, _> = read_frame(&mut behind, MAX_FRAME, SOON, "server").await;
        assert!(answer.is_err(), "{answer:?}");
    }
    tokio::time::timeout(SOON, conn.closed()).await.expect("the server closes the connection");
    assert!(inbox(f.home(), "agent1").is_empty());
    // Exactly the limit is fine, on a new connection.
    let (_ep2, conn) = f.connect("alpha").await;
    let envs: Vec<Vec<u8>> = (0..MAX_BATCH).map(|i| f.good("alpha", &format!("m{i}")).to_json()).collect();
    assert!(stored(&push(&conn, envs).await));
    assert_eq!(inbox(f.home(), "agent1").len(), MAX_BATCH);
    f.server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Fairness under a flood.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_member_does_not_starve_another() {
    const CONNS: usize = 4;
    const PUSHES_PER_CONN: usize = 8;
    const TOTAL: usize = CONNS * PUSHES_PER_CONN;
    let f = Fixture::new(&["alpha", "beta"]).await;
    // Sign everything first, so the flood is only network and server work.
    let batches: Vec<Vec<Vec<u8>>> = (0..TOTAL)
        .map(|p| (0..MAX_BATCH).map(|i| f.good("alpha", &format!("flood {p}.{i}")).to_json()).collect())
        .collect();
    let (ep_a, ep_b) = (raw_endpoint(f.key("alpha")).await, raw_endpoint(f.key("beta")).await);
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(dial(&ep_a, &f.server, ALPN_MESH).await);
    }
    let conn_b = dial(&ep_b, &f.server, ALPN_MESH).await;
    let victim = f.good("beta", "still heard");

    let done = Arc::new(AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for (p, envs) in batches.into_iter().enumerate() {
        let (conn, done) = (conns[p % CONNS].clone(), done.clone());
        flood.spawn(async move {
            // Every stream of one connection waits its turn: allow for all of them.
            let within = FRAME_TIMEOUT * PUSHES_PER_CONN as u32;
            let resp = request(&conn, &Frame::Push { envs }, within, "server").await;
            let ok = matches!(resp, Ok(Frame::Acks { ref acks }) if stored(acks));
            done.fetch_add(1, Ordering::SeqCst);
            ok
        });
    }
    // The flood is under way once the server has answered some of it.
    wait_until("the first flood push to be acked", SOON * 3, || match done.load(Ordering::SeqCst) {
        0 => Err("none yet".into()),
        _ => Ok(()),
    })
    .await;
    let acks = push(&conn_b, vec![victim.to_json()]).await;
    let flood_done_when_beta_acked = done.load(Ordering::SeqCst);
    assert!(stored(&acks), "{acks:?}");
    let mut all_ok = true;
    while let Some(r) = flood.join_next().await {
        all_ok &= r.unwrap();
    }
    assert!(all_ok, "every flood push was acked as stored");
    assert_eq!(inbox(f.home(), "agent1").len(), TOTAL * MAX_BATCH + 1);
    assert!(
        flood_done_when_beta_acked < TOTAL,
        "beta waited for the whole flood: {flood_done_when_beta_acked} of {TOTAL} pushes were done first"
    );
    // The server's own record agrees: beta's envelope was stored before alpha's last.
    let events = f.events.all();
    let received = |who: &str| {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, MeshEvent::Received { peer, .. } if peer == who))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let (alpha_seen, beta_seen) = (received("alpha"), received("beta"));
    assert_eq!((alpha_seen.len(), beta_seen.len()), (TOTAL * MAX_BATCH, 1));
    assert!(
        beta_seen[0] < *alpha_seen.last().unwrap(),
        "beta's envelope was recorded after the whole flood ({} of {} alpha events before it)",
        alpha_seen.iter().filter(|&&i| i < beta_seen[0]).count(),
        alpha_seen.len()
    );
    f.server.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Joining with tickets.

/// A root node that holds the mesh key on disk, as after `netsky mesh init`.
struct Root {
    mesh: Mesh,
    home: TempDir,
    key: SecretKey,
    mk: SecretKey,
    events: Events,
}

impl Root {
    async fn new() -> Root {
        Root::with(Relay::Disabled).await
    }

    async fn with(relay: Relay) -> Root {
        let home = TempDir::new().unwrap();
        let paths = MeshPaths::new(home.path());
        std::fs::create_dir_all(home.path().join("keys")).unwrap();
        let mk = netsky_keys::create_key_file(&paths.mesh_key()).unwrap().key;
        let key = SecretKey::generate();
        // Epoch 1 without addresses; the root records its own when it starts.
        store_charter(home.path(), &charter(&mk, 1, "root", &[("root", key.public(), vec![])]));
        let events = Events::default();
        let mesh = start_with(home.path(), "root", &key, &events, relay).await;
        let held = charter_file::load(&paths).unwrap().unwrap();
        assert_eq!(held.charter.root_member().unwrap().addrs, mesh.addrs(), "the root claimed its addresses");
        Root { mesh, home, key, mk, events }
    }

    fn body(&self, invitee: &str, ttl_s: i64) -> TicketBody {
        TicketBody {
            mesh: "home".into(),
            mesh_key: self.mk.public(),
            root: self.mesh.id(),
            root_addrs: self.mesh.addrs(),
            invitee: name(invitee),
            expires: time::OffsetDateTime::now_utc().unix_timestamp() + ttl_s,
            secret: rand::random(),
        }
    }

    /// Files the one-time secret as `netsky mesh invite` does.
    fn file_secret(&self, body: &TicketBody) {
        let record = serde_json::json!({ "name": body.invitee.to_string(), "expires": body.expires });
        let dir = MeshPaths::new(self.home.path()).tickets();
        netsky_bus::write_durable(
            &dir,
            &format!("{}.json", body.secret_hex()),
            record.to_string().as_bytes(),
        )
        .unwrap();
    }

    /// A ticket as `netsky mesh invite NAME` would print it.
    fn invite(&self, invitee: &str, ttl_s: i64) -> Ticket {
        let body = self.body(invitee, ttl_s);
        self.file_secret(&body);
        body.sign(&self.mk)
    }

    fn secret_file(&self, t: &Ticket, ext: &str) -> std::path::PathBuf {
        MeshPaths::new(self.home.path()).tickets().join(format!("{}.{ext}", t.body.secret_hex()))
    }
}

async fn join_err(key: &SecretKey, as_name: &str, t: &Ticket) -> String {
    netsky_mesh::join(key, &name(as_name), t, vec![], &Relay::Disabled, false)
        .await
        .expect_err("the join is refused")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_ticket_admits_its_joiner_once_and_every_bad_ticket_is_refused() {
    let r = Root::new().await;
    let joiner = SecretKey::generate();
    let t = r.invite("laptop", 3600);
    let c = netsky_mesh::join(&joiner, &name("laptop"), &t, vec![], &Relay::Disabled, false).await.unwrap();
    let me = c.charter.member(&name("laptop")).expect("the charter names the joiner");
    assert_eq!(me.node_id, joiner.public());
    assert_eq!(c.charter.epoch, 3, "init, the root's addresses, the join");
    assert_eq!(charter_file::load(&MeshPaths::new(r.home.path())).unwrap().unwrap(), c);
    assert!(r.secret_file(&t, "used").exists() && !r.secret_file(&t, "json").exists());
    assert_eq!(r.events.count(|e| matches!(e, MeshEvent::Joined { name, .. } if name == "laptop")), 1);

    // The node it admitted asking again (its answer lost) gets the same charter, no new epoch.
    let again =
        netsky_mesh::join(&joiner, &name("laptop"), &t, vec![], &Relay::Disabled, false).await.unwrap();
    assert_eq!(again, c, "an idempotent redeem");
    // The same ticket from any other node is refused.
    let e = join_err(&SecretKey::generate(), "laptop", &t).await;
    assert!(e.contains("already used") || e.contains("taken"), "{e}");
    // Another mesh's key, which signs its own ticket correctly.
    let other = SecretKey::generate();
    let mut body = r.body("desk", 3600);
    body.mesh_key = other.public();
    r.file_secret(&body);
    let e = join_err(&SecretKey::generate(), "desk", &body.sign(&other)).await;
    assert!(e.contains("another mesh"), "{e}");
    // This mesh's key named, another key's signature.
    let body = r.body("desk", 3600);
    r.file_secret(&body);
    let forged = Ticket { body: body.clone(), sig: body.sign(&other).sig };
    let e = join_err(&SecretKey::generate(), "desk", &forged).await;
    assert!(e.contains("does not verify"), "{e}");
    // Expired.
    let stale = r.invite("desk", -60);
    let e = join_err(&SecretKey::generate(), "desk", &stale).await;
    assert!(e.contains("expired"), "{e}");
    // For another name than the joiner's.
    let desk = r.invite("desk", 3600);
    let e = join_err(&SecretKey::generate(), "intruder", &desk).await;
    assert!(e.contains("admits desk, not intruder"), "{e}");

    // None of the refusals changed the charter or burned the desk ticket.
    let held = charter_file::load(&MeshPaths::new(r.home.path())).unwrap().unwrap();
    assert_eq!(held, c);
    assert!(r.secret_file(&desk, "json").exists());
    assert_eq!(r.events.count(|e| matches!(e, MeshEvent::JoinRefused { .. })), 5);
    let desk_key = SecretKey::generate();
    let c =
        netsky_mesh::join(&desk_key, &name("desk"), &desk, vec![], &Relay::Disabled, false).await.unwrap();
    assert_eq!(c.charter.member(&name("desk")).unwrap().node_id, desk_key.public());
    r.mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_that_failed_five_times_in_a_minute_is_refused_but_others_are_not() {
    let r = Root::new().await;
    let stale = r.invite("desk", -60);
    let pest = SecretKey::generate();
    for i in 0..5 {
        let e = join_err(&pest, "desk", &stale).await;
        assert!(e.contains("expired"), "attempt {i}: {e}");
    }
    let valid = r.invite("laptop", 3600);
    let e = join_err(&pest, "laptop", &valid).await;
    assert!(e.contains("too many"), "{e}");
    assert!(r.secret_file(&valid, "json").exists(), "a refused join does not burn the ticket");
    let held = charter_file::load(&MeshPaths::new(r.home.path())).unwrap().unwrap();
    assert!(held.charter.member(&name("laptop")).is_none());
    // Another node is not locked out by the pest's failures.
    let laptop = SecretKey::generate();
    let c = netsky_mesh::join(&laptop, &name("laptop"), &valid, vec![], &Relay::Disabled, false)
        .await
        .expect("a fresh joiner is admitted");
    assert_eq!(c.charter.member(&name("laptop")).map(|m| m.node_id), Some(laptop.public()));
    r.mesh.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. Charters pushed over the wire.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_charter_that_is_foreign_older_conflicting_or_tampered_is_not_stored() {
    let home = TempDir::new().unwrap();
    let (mk, root_key, key) = (SecretKey::generate(), SecretKey::generate(), SecretKey::generate());
    let members = |extra: Option<(&'static str, NodeId)>| {
        let mut m = vec![("root", root_key.public(), vec![]), ("member", key.public(), vec![])];
        m.extend(extra.map(|(n, id)| (n, id, vec![])));
        m
    };
    let held = charter(&mk, 2, "root", &members(None));
    store_charter(home.path(), &held);
    let events = Events::default();
    let mesh = start(home.path(), "member", &key, &events).await;
    let before = charter_bytes(home.path());

    // The root's key, driven by hand.
    let ep = raw_endpoint(&root_key).await;
    let conn = dial(&ep, &mesh, ALPN_MESH).await;
    let offer = |c: &SignedCharter| {
        let (conn, json) = (conn.clone(), c.to_json());
        async move { request(&conn, &Frame::Charter { json }, SOON, "member").await.unwrap() }
    };
    let newcomer = SecretKey::generate().public();
    let foreign_key = SecretKey::generate();
    let foreign = charter(&foreign_key, 5, "root", &members(Some(("evil", newcomer))));
    let older = charter(&mk, 1, "root", &members(Some(("old", newcomer))));
    let conflict = charter(&mk, 2, "root", &members(Some(("twin", newcomer))));
    let mut tampered = charter(&mk, 3, "root", &members(None));
    tampered.charter.members.push(CharterMember { name: name("evil"), node_id: newcomer, addrs: vec![] });
    let cases: [(&str, &SignedCharter, Option<&str>); 4] = [
        ("another mesh key", &foreign, Some("mesh key")),
        ("a lower epoch", &older, None),
        ("the same epoch, other content", &conflict, Some("conflict")),
        ("a signature that does not cover the content", &tampered, Some("does not verify")),
    ];
    for (case, c, refusal) in cases {
        let refused_before = events.charter_refusals().len();
        let resp = offer(c).await;
        assert_eq!(charter_bytes(home.path()), before, "{case}: the charter held changed");
        let refusals = events.charter_refusals();
        match refusal {
            Some(words) => {
                assert_eq!(refusals.len(), refused_before + 1, "{case}: {refusals:?}");
                assert!(refusals.last().unwrap().contains(words), "{case}: {refusals:?}");
                // The pusher learns of the refusal too, not only this node's log.
                assert!(
                    matches!(resp, Frame::Refused { ref reason } if reason.contains(words)),
                    "{case}: answered {resp:?}"
                );
            }
            None => {
                // A stale charter is no attack: answered Ok, but logged as ignored.
                assert_eq!(refusals.len(), refused_before + 1, "{case}: {refusals:?}");
                assert!(refusals.last().unwrap().contains("stale"), "{case}: {refusals:?}");
                assert!(matches!(resp, Frame::Ok { .. }), "{case}: answered {resp:?}");
            }
        }
    }
    assert_eq!(events.count(|e| matches!(e, MeshEvent::CharterStored { .. })), 0);

    // The control: a genuine newer charter from the same key is stored.
    let newer = charter(&mk, 3, "root", &members(Some(("laptop", newcomer))));
    assert!(matches!(offer(&newer).await, Frame::Ok { .. }));
    assert_eq!(SignedCharter::from_json(&charter_bytes(home.path())).unwrap(), newer);
    assert_eq!(events.count(|e| matches!(e, MeshEvent::CharterStored { epoch: 3, .. })), 1);
    mesh.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Handing over the root role when an answer is lost.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_whose_answer_was_lost_is_confirmed_again_and_the_old_root_gives_up_its_key() {
    let p = Pair::new().await;
    let (ha, hb, ka, mk, ea, c1) = (&p.ha, &p.hb, &p.ka, &p.mk, &p.ea, &p.c1);
    let (pa, pb) = (MeshPaths::new(ha.path()), MeshPaths::new(hb.path()));
    for h in [ha, hb] {
        std::fs::create_dir_all(h.path().join("keys")).unwrap();
    }
    netsky_keys::save_key_file(&pa.mesh_key(), mk.clone()).unwrap();
    p.a.kick();
    // alpha hands the root role to beta, as `mesh promote beta` does: the
    // charter is recorded as pending before it leaves.
    let c2 = charter_file::reissue(&c1.charter, mk, |c| {
        c.root = name("beta");
        Ok(())
    })
    .unwrap();
    let lock = charter_file::lock(&pa).unwrap();
    charter_file::begin_handover(&pa, &lock, &c2).unwrap();
    drop(lock);
    // Nothing else is issued while it is pending.
    let err = charter_file::amend(&pa, mk, |_| Ok(())).unwrap_err().to_string();
    assert!(err.contains("being handed to beta"), "{err}");
    let target = c1.charter.member(&name("beta")).unwrap().clone();
    netsky_mesh::handover(ka, &target, mk, &c2, &Relay::Disabled, false).await.unwrap();
    // alpha never heard that answer, so it sends the very same charter again:
    // beta, root now, confirms it instead of refusing a handover from a non-root.
    netsky_mesh::handover(ka, &target, mk, &c2, &Relay::Disabled, false).await.unwrap();
    assert_eq!(charter_bytes(hb.path()), c2.to_json());
    assert!(pb.mesh_key().exists(), "beta holds the mesh key");
    // As root, beta pushes its charter to alpha, which then gives up its key.
    wait_until("alpha to hold epoch 2 and no mesh key", SOON, || {
        let done =
            charter_bytes(ha.path()) == c2.to_json() && !pa.mesh_key().exists() && !pa.handover().exists();
        if done { Ok(()) } else { Err(format!("{:?}", ea.all())) }
    })
    .await;
    // The event follows the removal: wait for it too, then check it came once.
    wait_until("the key-given-up event", SOON, || {
        let n = ea.count(
            |e| matches!(e, MeshEvent::CharterStored { from, .. } if from.contains("mesh key given up")),
        );
        if n == 1 { Ok(()) } else { Err(format!("{n}: {:?}", ea.all())) }
    })
    .await;
    p.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. A self-hosted relay.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_self_hosted_relay_an_envelope_reaches_a_member_whose_address_no_charter_holds() {
    // A plain-HTTP iroh relay on loopback, as `iroh-relay --dev` runs one.
    let mut cfg = iroh_relay::server::ServerConfig::default();
    cfg.relay = Some(iroh_relay::server::RelayConfig::new(([127, 0, 0, 1], 0)));
    let relay = iroh_relay::server::Server::spawn(cfg).await.unwrap();
    let url = format!("http://{}", relay.http_addr().unwrap());
    let (ha, hb) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (ka, kb, mk) = (SecretKey::generate(), SecretKey::generate(), SecretKey::generate());
    let (ea, eb) = (Events::default(), Events::default());
    let a = start_with(ha.path(), "alpha", &ka, &ea, Relay::Url(url.clone())).await;
    let b = start_with(hb.path(), "beta", &kb, &eb, Relay::Url(url)).await;
    // No direct address anywhere: only the relay can bring them together.
    let c = charter(&mk, 1, "alpha", &[("alpha", a.id(), vec![]), ("beta", b.id(), vec![])]);
    store_charter(ha.path(), &c);
    store_charter(hb.path(), &c);
    a.kick();
    b.kick();
    let e = env(&ka, "agent0@alpha", "agent1@beta", "by way of the relay");
    let outbox = MeshPaths::new(ha.path()).outbox();
    netsky_bus::write_durable(&outbox, &e.file_name(), &e.to_json()).unwrap();
    a.kick();
    let file = e.file_name();
    wait_until("the envelope in beta's inbox, acknowledged", Duration::from_secs(30), || {
        let (inb, out) = (inbox(hb.path(), "agent1"), envelope_files(&outbox).len());
        if inb == [file.clone()] && out == 0 {
            Ok(())
        } else {
            Err(format!("inbox {inb:?}, outbox {out}; {:?}", ea.all()))
        }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_self_hosted_relay_a_node_joins_and_takes_over_the_root_with_no_address_known() {
    let mut cfg = iroh_relay::server::ServerConfig::default();
    cfg.relay = Some(iroh_relay::server::RelayConfig::new(([127, 0, 0, 1], 0)));
    let server = iroh_relay::server::Server::spawn(cfg).await.unwrap();
    let relay = Relay::Url(format!("http://{}", server.http_addr().unwrap()));
    let r = Root::with(relay.clone()).await;
    // A ticket with no address for the root (a root behind NAT, say): only the relay leads there.
    let mut body = r.body("laptop", 3600);
    body.root_addrs.clear();
    r.file_secret(&body);
    let t = body.sign(&r.mk);
    let joiner = SecretKey::generate();
    let e = netsky_mesh::join(&joiner, &name("laptop"), &t, vec![], &Relay::Disabled, false)
        .await
        .expect_err("no address and no relay: nothing to dial")
        .to_string();
    assert!(e.contains("no address for the root"), "{e}");
    let c = netsky_mesh::join(&joiner, &name("laptop"), &t, vec![], &relay, false).await.unwrap();
    assert_eq!(c.charter.member(&name("laptop")).unwrap().node_id, joiner.public());

    // The root hands its role to the new member, which reported no address either.
    let home = TempDir::new().unwrap();
    std::fs::create_dir_all(home.path().join("keys")).unwrap();
    store_charter(home.path(), &c);
    let laptop = start_with(home.path(), "laptop", &joiner, &Events::default(), relay.clone()).await;
    // As `mesh promote laptop` does: under the charter lock, from the charter
    // held now (laptop's hello may have added its addresses), recorded as pending.
    let root_paths = MeshPaths::new(r.home.path());
    let lock = charter_file::lock(&root_paths).unwrap();
    let held = charter_file::load(&root_paths).unwrap().unwrap();
    let c2 = charter_file::reissue(&held.charter, &r.mk, |ch| {
        ch.root = name("laptop");
        Ok(())
    })
    .unwrap();
    charter_file::begin_handover(&root_paths, &lock, &c2).unwrap();
    drop(lock);
    let mut target = c2.charter.member(&name("laptop")).unwrap().clone();
    target.addrs.clear();
    netsky_mesh::handover(&r.key, &target, &r.mk, &c2, &relay, false).await.unwrap();
    let paths = MeshPaths::new(home.path());
    // (As root it may already have re-issued the charter with its own addresses.)
    let held = charter_file::load(&paths).unwrap().unwrap();
    assert_eq!(held.charter.root, name("laptop"), "laptop holds a charter naming it root");
    assert!(held.charter.epoch >= c2.charter.epoch && held.charter.mesh_key == r.mk.public());
    assert!(paths.mesh_key().exists(), "and the mesh key");
    laptop.shutdown().await;
    r.mesh.shutdown().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_stored_the_new_charter_but_kept_its_key_gives_it_up_at_start() {
    // A promote that crashed between storing the new charter and deleting the key.
    let home = TempDir::new().unwrap();
    let (mk, ka, kb) = (SecretKey::generate(), SecretKey::generate(), SecretKey::generate());
    let members = [("alpha", ka.public(), vec![]), ("beta", kb.public(), vec![])];
    let c1 = charter(&mk, 1, "alpha", &members);
    let c2 = charter_file::reissue(&c1.charter, &mk, |c| {
        c.root = name("beta");
        Ok(())
    })
    .unwrap();
    let paths = MeshPaths::new(home.path());
    std::fs::create_dir_all(home.path().join("keys")).unwrap();
    netsky_keys::save_key_file(&paths.mesh_key(), mk.clone()).unwrap();
    store_charter(home.path(), &c2);
    let lock = charter_file::lock(&paths).unwrap();
    charter_file::begin_handover(&paths, &lock, &c2).unwrap();
    drop(lock);
    let events = Events::default();
    let a = start(home.path(), "alpha", &ka, &events).await;
    assert!(!paths.mesh_key().exists(), "the key stays with the new root alone");
    assert!(!paths.handover().exists());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_with_a_conflicting_charter_is_refused_and_leaves_no_key_behind() {
    let p = Pair::new().await;
    let (hb, ka, mk, c1, b) = (&p.hb, &p.ka, &p.mk, &p.c1, &p.b);
    // beta holds an epoch 2 that still names alpha root (an address update, say).
    let c2 = charter_file::reissue(&c1.charter, mk, |_| Ok(())).unwrap();
    store_charter(hb.path(), &c2);
    b.kick();
    // alpha, not knowing, hands over with a different epoch 2.
    let other = charter_file::reissue(&c1.charter, mk, |c| {
        c.root = name("beta");
        Ok(())
    })
    .unwrap();
    let target = c1.charter.member(&name("beta")).unwrap().clone();
    std::fs::create_dir_all(hb.path().join("keys")).unwrap();
    wait_until("beta to hold epoch 2", SOON, || {
        if charter_bytes(hb.path()) == c2.to_json() { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    let err = netsky_mesh::handover(ka, &target, mk, &other, &Relay::Disabled, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused the handover"), "{err}");
    assert!(!MeshPaths::new(hb.path()).mesh_key().exists(), "a refused handover keeps no key");
    assert_eq!(charter_bytes(hb.path()), c2.to_json());
    p.shutdown().await;
}
