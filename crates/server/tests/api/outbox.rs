//! Outbox consumers across servers: two servers on one database (two
//! connection pools with their own lease owners) read one consumer; every
//! event reaches it at least once, never twice at the same time, and a
//! server that dies mid-batch is taken over once its lease lapses.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use viberglass_domain::{DomainEvent, EventType, NewEvent};
use viberglass_server::outbox::{Consumer, GapWatch, deliver_once};
use viberglass_store::Store;
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

backend_tests!(two_servers_deliver_every_event_at_least_once_and_never_concurrently);

/// Records what it sees, and whether two handlers ever overlapped.
#[derive(Default)]
struct Probe {
    busy: AtomicBool,
    overlaps: AtomicUsize,
    seen: std::sync::Mutex<Vec<i64>>,
}

struct Recorder(Arc<Probe>);

impl Consumer<()> for Recorder {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn handle<'a>(&'a self, _cx: &'a (), event: &'a DomainEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.0.busy.swap(true, Ordering::SeqCst) {
                self.0.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            // Long enough that two unguarded readers would overlap.
            tokio::task::yield_now().await;
            self.0.seen.lock().unwrap().push(event.seq);
            self.0.busy.store(false, Ordering::SeqCst);
            Ok(())
        })
    }
}

async fn server(store: Store, owner: &'static str, probe: Arc<Probe>, until: usize, lease: Duration) {
    let consumer = Recorder(probe.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut gaps = GapWatch::default();
    while probe.seen.lock().unwrap().iter().collect::<HashSet<_>>().len() < until {
        assert!(tokio::time::Instant::now() < deadline, "{owner}: the events were not all delivered");
        if deliver_once(&store, &(), &consumer, owner, lease, &mut gaps).await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn two_servers_deliver_every_event_at_least_once_and_never_concurrently(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let a = db.store().await;
    let b = db.store().await;
    let event = |n: usize| NewEvent::new(EventType::TicketEdited, serde_json::json!({"n": n}));
    // Written from both servers, interleaved.
    for n in 0..1000 {
        let writer = if n % 2 == 0 { &a } else { &b };
        writer.emit_event(&event(n)).await.unwrap();
    }
    let total = a.list_outbox(0, 2000).await.unwrap().len();
    assert_eq!(total, 1000);

    // Server A starts, handles one batch and dies without releasing its lease.
    let probe = Arc::new(Probe::default());
    let short = Duration::from_secs(2);
    let dead = Recorder(probe.clone());
    let first = deliver_once(&a, &(), &dead, "server-a", short, &mut GapWatch::default()).await.unwrap();
    assert!(first > 0 && first < 1000, "a batch, not everything: {first}");

    // B and a restarted A share the rest; B waits for A's lapsed lease.
    let both = tokio::join!(
        server(a.clone(), "server-a-restarted", probe.clone(), 1000, short),
        server(b.clone(), "server-b", probe.clone(), 1000, short),
    );
    let _ = both;
    assert_eq!(probe.overlaps.load(Ordering::SeqCst), 0, "no event ran while another did");
    let seen = probe.seen.lock().unwrap().clone();
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 1000, "every event at least once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, each once here (no batch was lost mid-way)");
    let states = a.consumer_states().await.unwrap();
    assert_eq!((states[0].name.as_str(), states[0].pending), ("probe", 0));
}
