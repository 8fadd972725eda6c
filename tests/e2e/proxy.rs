//! A fault-injecting TCP proxy between the agent and the server. It runs on a
//! thread of its own (its own tokio runtime), so that tests may block on child
//! processes while it works.
//!
//! Each connection it accepts gets the fault set at that moment: pass, refuse,
//! delay, cut mid-request, cut at the response (the server did the work, the
//! agent never hears), blackhole, or a seeded random mix of them. The upstream
//! address can change, so a restarted server can come back on another port
//! while the agent keeps the proxy's address.
//!
//! The fault tests run the server with plain HTTP behind it, so that "the
//! response" is exactly the first bytes the server sends on a connection.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// What happens to the connections accepted from now on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Pass,
    /// Accepted, then closed at once: the client sees a reset.
    Refuse,
    /// Every chunk, both ways, waits this long.
    Delay(Duration),
    /// Forwards this many bytes of the request, then closes both sides.
    CutRequest {
        after_bytes: usize,
    },
    /// Forwards the whole request; when the server starts answering, closes
    /// both sides without passing a byte on.
    CutResponse,
    /// Swallows everything and never answers.
    Blackhole,
    /// Per connection, one of the faults above at random (seeded), passing
    /// `pass_percent` of them untouched; the first connection after it is set
    /// always meets one, so that a short run cannot slip through untouched.
    Chaos {
        pass_percent: u8,
    },
}

/// Counts of what the proxy did, for the test's report.
#[derive(Debug, Default)]
pub struct Tally {
    pub connections: AtomicU64,
    pub passed: AtomicU64,
    pub refused: AtomicU64,
    pub delayed: AtomicU64,
    pub cut_requests: AtomicU64,
    pub cut_responses: AtomicU64,
    pub blackholed: AtomicU64,
}

impl Tally {
    /// Connections that met a fault.
    pub fn faults(&self) -> u64 {
        [&self.refused, &self.delayed, &self.cut_requests, &self.cut_responses, &self.blackholed]
            .iter()
            .map(|count| count.load(Relaxed))
            .sum()
    }
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    fault: Mutex<Fault>,
    /// Connections left before the fault reverts to `Pass` (`u64::MAX`: never).
    budget: AtomicU64,
    /// No connection has met the fault set last yet (see `Fault::Chaos`).
    fresh: AtomicBool,
    rng: Mutex<StdRng>,
    tally: Tally,
}

pub struct FaultyProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyProxy {
    /// Starts a proxy on 127.0.0.1 (a free port) towards `upstream`.
    pub fn start(upstream: SocketAddr, seed: u64) -> Self {
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            fault: Mutex::new(Fault::Pass),
            budget: AtomicU64::new(u64::MAX),
            fresh: AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            tally: Tally::default(),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let background = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds");
                ready_tx.send(listener.local_addr().expect("an address")).expect("the test waits");
                tokio::select! {
                    () = accept_loop(listener, background) => {}
                    _ = stop => {}
                }
            });
            // Dropping the runtime cancels every connection still open.
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(10)).expect("the proxy starts");
        Self { addr, shared, shutdown: Some(shutdown), thread: Some(thread) }
    }

    pub fn set_fault(&self, fault: Fault) {
        self.set_fault_for(fault, u64::MAX);
    }

    /// `fault` for the next `connections` connections, then `Pass`.
    pub fn set_fault_for(&self, fault: Fault, connections: u64) {
        let mut current = self.shared.fault.lock().unwrap_or_else(PoisonError::into_inner);
        self.shared.budget.store(connections, Relaxed);
        self.shared.fresh.store(true, Relaxed);
        *current = fault;
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap_or_else(PoisonError::into_inner) = upstream;
    }

    pub fn tally(&self) -> &Tally {
        &self.shared.tally
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let fault = pick(&shared);
        shared.tally.connections.fetch_add(1, Relaxed);
        let upstream = *shared.upstream.lock().unwrap_or_else(PoisonError::into_inner);
        tokio::spawn(serve(client, upstream, fault, Arc::clone(&shared)));
    }
}

/// The fault for one new connection.
fn pick(shared: &Shared) -> Fault {
    let fault = *shared.fault.lock().unwrap_or_else(PoisonError::into_inner);
    let left = shared.budget.fetch_update(Relaxed, Relaxed, |left| Some(left.saturating_sub(1)));
    if matches!(left, Ok(0)) {
        return Fault::Pass;
    }
    let Fault::Chaos { pass_percent } = fault else { return fault };
    let mut rng = shared.rng.lock().unwrap_or_else(PoisonError::into_inner);
    let first = shared.fresh.swap(false, Relaxed);
    if !first && rng.random_range(0..100) < pass_percent {
        return Fault::Pass;
    }
    match rng.random_range(0..4) {
        0 => Fault::Refuse,
        1 => Fault::Delay(Duration::from_millis(rng.random_range(10..300))),
        2 => Fault::CutRequest { after_bytes: rng.random_range(0..400) },
        _ => Fault::CutResponse,
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Fault, shared: Arc<Shared>) {
    let tally = &shared.tally;
    match fault {
        Fault::Refuse => {
            tally.refused.fetch_add(1, Relaxed);
            // Linger 0 would be a true RST; a close is what a dead port behind
            // a load balancer looks like, and is what clients must survive.
            drop(client);
            return;
        }
        Fault::Blackhole => {
            tally.blackholed.fetch_add(1, Relaxed);
            let mut sink = [0u8; 4096];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        _ => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return; // The server is down: the client sees the connection close.
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    let mut sent_up = 0usize;
    let delay = match fault {
        Fault::Delay(delay) => {
            tally.delayed.fetch_add(1, Relaxed);
            Some(delay)
        }
        _ => None,
    };
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => {
                let Ok(n @ 1..) = read else { break };
                let mut chunk = &up[..n];
                if let Fault::CutRequest { after_bytes } = fault {
                    let room = after_bytes.saturating_sub(sent_up);
                    if room < chunk.len() {
                        chunk = &chunk[..room];
                        let _ = server_write.write_all(chunk).await;
                        tally.cut_requests.fetch_add(1, Relaxed);
                        break;
                    }
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                if server_write.write_all(chunk).await.is_err() {
                    break;
                }
                sent_up += chunk.len();
            }
            read = server_read.read(&mut down) => {
                let Ok(n @ 1..) = read else { break };
                if fault == Fault::CutResponse {
                    tally.cut_responses.fetch_add(1, Relaxed);
                    break;
                }
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                if client_write.write_all(&down[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    if fault == Fault::Pass {
        tally.passed.fetch_add(1, Relaxed);
    }
    // Both sides close here, wherever the loop stopped.
}
