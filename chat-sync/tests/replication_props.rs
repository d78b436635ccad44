//! Replication properties on the pure machines: whatever the network does to the push
//! path (loss, duplication, reordering), catch-up by version vector (`sync`) brings every
//! replica to the same state; and a client reply is never released before enough peers
//! acknowledged its event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::{ChatState, Event, EventId, EventKind, Timestamp};
use chat_sync::{AckPolicy, Release, ReplicationConfig, Replicator};
use proptest::prelude::*;

const NAMES: &[&str] = &["ana", "bia", "geral", "tech"];

#[derive(Debug, Clone)]
struct Write {
    origin: usize,
    kind: EventKind,
    request_id: Option<u8>,
}

fn kind() -> impl Strategy<Value = EventKind> {
    let name = prop::sample::select(NAMES.to_vec()).prop_map(str::to_string);
    prop_oneof![
        name.clone()
            .prop_map(|user| EventKind::UserLoggedIn { user }),
        name.clone()
            .prop_map(|channel| EventKind::ChannelCreated { channel }),
        (name.clone(), name.clone(), "[a-z]{0,5}").prop_map(|(channel, user, message)| {
            EventKind::ChannelMessage {
                channel,
                user,
                message,
            }
        }),
        (name.clone(), name, "[a-z]{0,5}")
            .prop_map(|(src, dst, message)| EventKind::DirectMessage { src, dst, message }),
    ]
}

fn write(replicas: usize) -> impl Strategy<Value = Write> {
    (0..replicas, kind(), proptest::option::of(0u8..6)).prop_map(|(origin, kind, request_id)| {
        Write {
            origin,
            kind,
            request_id,
        }
    })
}

/// One replica: its state and its durable log (what `sync` answers from).
#[derive(Default)]
struct Replica {
    state: ChatState,
    log: Vec<Event>,
}

impl Replica {
    fn apply(&mut self, e: &Event) {
        if self.state.apply(e) == chat_core::ApplyOutcome::Applied {
            self.log.push(e.clone());
        }
    }

    fn vector(&self) -> BTreeMap<String, u64> {
        self.state
            .applied()
            .iter()
            .map(|(o, a)| (o.clone(), a.contiguous()))
            .collect()
    }

    /// What this replica answers to `sync` with `vector`: every event it holds beyond it.
    fn beyond(&self, vector: &BTreeMap<String, u64>) -> Vec<Event> {
        self.log
            .iter()
            .filter(|e| e.id.seq > vector.get(&e.id.origin).copied().unwrap_or(0))
            .cloned()
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn push_loss_duplication_and_reordering_then_catch_up_converge(
        replicas in 2usize..5,
        writes in prop::collection::vec(write(4), 1..40),
        fates in prop::collection::vec(0u8..4, 160),
        order in prop::collection::vec(any::<u32>(), 160),
    ) {
        let mut rs: Vec<Replica> = (0..replicas).map(|_| Replica::default()).collect();
        let mut seqs = vec![0u64; replicas];
        let mut clock = 0u64;
        let mut pushes: Vec<(u32, usize, Event)> = Vec::new();
        let mut k = 0;
        for w in &writes {
            let origin = w.origin % replicas;
            seqs[origin] += 1;
            clock += 1 + (k as u64 % 3);
            let e = Event {
                id: EventId { origin: format!("s{origin}"), seq: seqs[origin] },
                clock,
                timestamp: Timestamp::from_millis(clock as i64 * 1000),
                request_id: w.request_id.map(|r| format!("r{r}")),
                kind: w.kind.clone(),
            };
            rs[origin].apply(&e);
            // Push to every other replica: 0 lost, 1 delivered, 2 delivered twice, 3 delivered late.
            for (to, r) in rs.iter().enumerate().take(replicas) {
                let _ = r;
                if to == origin {
                    continue;
                }
                let fate = fates[k % fates.len()];
                let at = order[k % order.len()];
                k += 1;
                match fate {
                    0 => {}
                    1 => pushes.push((at, to, e.clone())),
                    2 => {
                        pushes.push((at, to, e.clone()));
                        pushes.push((at.wrapping_mul(7), to, e.clone()));
                    }
                    _ => pushes.push((at | 0x8000_0000, to, e.clone())),
                }
            }
        }
        pushes.sort_by_key(|(at, _, _)| *at);
        for (_, to, e) in &pushes {
            rs[*to].apply(e);
        }
        // Catch-up: every replica syncs with every other until nothing changes (bounded).
        for _round in 0..replicas + 1 {
            for i in 0..replicas {
                for j in 0..replicas {
                    if i == j {
                        continue;
                    }
                    let missing = rs[j].beyond(&rs[i].vector());
                    for e in &missing {
                        rs[i].apply(e);
                    }
                }
            }
        }
        let digest = rs[0].state.digest();
        for r in &rs[1..] {
            prop_assert_eq!(&r.state.digest(), &digest);
            prop_assert_eq!(&r.state, &rs[0].state);
        }
        prop_assert_eq!(rs[0].state.event_count() as usize, writes.len());
    }

    #[test]
    fn a_reply_is_released_only_with_enough_copies_or_by_policy(
        ops in prop::collection::vec((0u8..6, 0usize..3, any::<u64>()), 1..120),
        ack_replicas in 0usize..3,
        refuse in any::<bool>(),
        window in 1usize..4,
    ) {
        let peers = ["b", "c"];
        let cfg = ReplicationConfig {
            ack_replicas,
            ack_timeout: Duration::from_millis(100),
            policy: if refuse { AckPolicy::Refuse } else { AckPolicy::AcceptLocal },
            window,
        };
        let t0 = Instant::now();
        let mut r: Replicator<u64> = Replicator::new(cfg, 0);
        r.set_peers(peers);
        let mut committed = 0u64;
        let mut sent: Vec<(String, u64, u64, u64)> = Vec::new();
        let mut acked: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
        let mut alive: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        let mut now = t0;
        for (op, who, x) in ops {
            now += Duration::from_millis(x % 50);
            match op {
                0 => {
                    committed += 1;
                    r.committed(committed);
                    r.hold(committed, committed);
                }
                1 => {
                    for s in r.poll_sends(now, &alive) {
                        sent.push((s.peer, s.msg, s.from, s.to));
                    }
                }
                2 if !sent.is_empty() => {
                    let (peer, msg, from, to) = sent.remove((x as usize) % sent.len());
                    r.handle_ack(&peer, msg);
                    acked.entry(peer).or_default().extend(from..=to);
                }
                3 => {
                    let p = peers[who % 2].to_string();
                    alive.retain(|a| *a != p);
                    r.handle_peer_down(&p);
                }
                4 => {
                    let p = peers[who % 2].to_string();
                    if !alive.contains(&p) {
                        alive.push(p);
                    }
                }
                _ => {
                    let live = alive.len();
                    let required = ack_replicas.min(live);
                    for rel in r.poll_released(&alive) {
                        match rel {
                            Release::Ack(seq) => {
                                let copies = acked.values().filter(|s| s.contains(&seq)).count();
                                let by_policy = required == 0 && (ack_replicas == 0 || !refuse);
                                prop_assert!(copies >= required.max(1) || by_policy,
                                    "seq {} released with {} copies, {} required", seq, copies, required);
                            }
                            Release::Refuse(_) => prop_assert!(refuse && required == 0 && ack_replicas > 0),
                        }
                    }
                }
            }
        }
    }
}
