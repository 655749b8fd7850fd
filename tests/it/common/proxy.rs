//! A TCP proxy on 127.0.0.1 in front of a real server, to make that server unreachable, stop
//! answering, and come back, while the client under test keeps running.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Relays connections of this generation.
    Up(u32),
    /// Holds every connection open and relays nothing, as a hung server does.
    Hanging(u32),
}

/// Connections end when the proxy resumes after hanging, so clients reconnect as they would to
/// a restarted server.
pub struct Proxy {
    pub address: SocketAddr,
    state: watch::Sender<State>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        assert!(upstream.ip().is_loopback(), "tests only talk to loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (state, watcher) = watch::channel(State::Up(0));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, watcher.clone()));
            }
        });
        Self { address, state }
    }

    /// The server stops answering: connections stay open, and nothing comes back.
    pub fn hang(&self) {
        self.state.send_modify(|state| {
            if let State::Up(generation) = *state {
                *state = State::Hanging(generation);
            }
        });
    }

    /// The server answers again; connections made before are closed.
    pub fn resume(&self) {
        self.state.send_modify(|state| {
            if let State::Hanging(generation) = *state {
                *state = State::Up(generation + 1);
            }
        });
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<State>) {
    let current = *state.borrow_and_update();
    let generation = match current {
        State::Up(generation) => generation,
        State::Hanging(_) => return hold_until_change(&mut state).await,
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = until_not_up(&mut state, generation) => {
            let hanging = *state.borrow() == State::Hanging(generation);
            if hanging {
                hold_until_change(&mut state).await;
            }
        }
    }
}

async fn until_not_up(state: &mut watch::Receiver<State>, generation: u32) {
    loop {
        let current = *state.borrow_and_update();
        if current != State::Up(generation) {
            return;
        }
        if state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn hold_until_change(state: &mut watch::Receiver<State>) {
    let _ = state.changed().await;
}

/// An address on 127.0.0.1 where nothing listens: connections are refused.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A listener on 127.0.0.1 that accepts connections and never says a word.
pub async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    address
}
