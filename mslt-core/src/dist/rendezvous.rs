//! The rendezvous that starts a process group: rank 0 listens on `MASTER_ADDR:MASTER_PORT`,
//! every other rank connects, and once all `WORLD_SIZE - 1` ranks have checked in, rank 0 hands
//! each of them the same payload (the 128-byte NCCL unique id). It doubles as a start barrier
//! and a consistency check: every rank sends a token (a digest of its resolved run config), and
//! a rank whose token differs from rank 0's is turned away with an error naming both.
//!
//! Wire format (big-endian): client -> `MSLT-RDV1`, rank u32, world u32, token len u32, token;
//! server -> status u8 (0 = ok, 1 = error), len u32, payload or error message.

use super::WorldSpec;
use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 9] = b"MSLT-RDV1";
const MAX_LEN: u32 = 1 << 20;

fn net(what: &str, e: std::io::Error) -> Error {
    Error::Dist(format!("rendezvous: {what}: {e}"))
}

fn read_u32(s: &mut TcpStream, what: &str) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).map_err(|e| net(what, e))?;
    Ok(u32::from_be_bytes(b))
}

fn read_bytes(s: &mut TcpStream, what: &str) -> Result<Vec<u8>> {
    let n = read_u32(s, what)?;
    if n > MAX_LEN {
        return Err(Error::Dist(format!(
            "rendezvous: {what}: {n} bytes is too long"
        )));
    }
    let mut v = vec![0u8; n as usize];
    s.read_exact(&mut v).map_err(|e| net(what, e))?;
    Ok(v)
}

fn reply(s: &mut TcpStream, ok: bool, body: &[u8]) -> Result<()> {
    let mut msg = vec![u8::from(!ok)];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg).map_err(|e| net("reply", e))
}

fn resolve(spec: &WorldSpec) -> Result<SocketAddr> {
    (spec.master_addr.as_str(), spec.master_port)
        .to_socket_addrs()
        .map_err(|e| net(&format!("MASTER_ADDR {}", spec.master_addr), e))?
        .next()
        .ok_or_else(|| {
            Error::Dist(format!(
                "rendezvous: MASTER_ADDR {} resolves to no address",
                spec.master_addr
            ))
        })
}

/// Runs the rendezvous for `spec`. Rank 0 passes `Some(payload)` and gets it back; every other
/// rank passes `None` and receives rank 0's payload. Fails after `timeout` if the world does not
/// assemble.
pub fn share(
    spec: &WorldSpec,
    payload: Option<Vec<u8>>,
    token: &str,
    timeout: Duration,
) -> Result<Vec<u8>> {
    spec.validate()?;
    if spec.world_size == 1 {
        return payload.ok_or_else(|| Error::Dist("rendezvous: rank 0 has no payload".into()));
    }
    if spec.rank == 0 {
        let payload =
            payload.ok_or_else(|| Error::Dist("rendezvous: rank 0 has no payload".into()))?;
        serve(spec, &payload, token, timeout)?;
        Ok(payload)
    } else {
        join(spec, token, timeout)
    }
}

fn serve(spec: &WorldSpec, payload: &[u8], token: &str, timeout: Duration) -> Result<()> {
    let bind = SocketAddr::from(([0, 0, 0, 0], spec.master_port));
    let listener = TcpListener::bind(bind).map_err(|e| {
        net(
            &format!(
                "rank 0 cannot listen on port {} (MASTER_PORT)",
                spec.master_port
            ),
            e,
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| net("listener", e))?;
    let deadline = Instant::now() + timeout;
    let mut joined: Vec<Option<TcpStream>> = (0..spec.world_size).map(|_| None).collect();
    let mut missing = spec.world_size - 1;
    while missing > 0 {
        let (mut s, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let absent: Vec<String> = (1..spec.world_size)
                        .filter(|&r| joined[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(Error::Dist(format!(
                        "rendezvous: timed out after {timeout:?} on port {}: ranks {} never joined",
                        spec.master_port,
                        absent.join(", ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(net("accept", e)),
        };
        s.set_nonblocking(false).map_err(|e| net("socket", e))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| net("socket", e))?;
        let mut magic = [0u8; 9];
        if s.read_exact(&mut magic).is_err() || &magic != MAGIC {
            tracing::warn!("rendezvous: ignored a connection from {peer} (not an mslt rank)");
            continue;
        }
        let rank = read_u32(&mut s, "rank")? as usize;
        let world = read_u32(&mut s, "world size")? as usize;
        let their = String::from_utf8_lossy(&read_bytes(&mut s, "token")?).to_string();
        let problem = if world != spec.world_size {
            Some(format!(
                "rank {rank} ({peer}) has world size {world}, rank 0 has {}",
                spec.world_size
            ))
        } else if rank == 0 || rank >= spec.world_size {
            Some(format!(
                "rank {rank} ({peer}) is not a rank of 1..{}",
                spec.world_size - 1
            ))
        } else if joined[rank].is_some() {
            Some(format!("rank {rank} joined twice (second from {peer})"))
        } else if their != token {
            Some(format!(
                "rank {rank} ({peer}) runs a different configuration than rank 0 (digest {their} vs {token})"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let _ = reply(&mut s, false, p.as_bytes());
            // Tell the ranks already waiting, so nobody hangs.
            for t in joined.iter_mut().flatten() {
                let _ = reply(t, false, p.as_bytes());
            }
            return Err(Error::Dist(format!("rendezvous: {p}")));
        }
        joined[rank] = Some(s);
        missing -= 1;
    }
    for s in joined.iter_mut().flatten() {
        reply(s, true, payload)?;
    }
    Ok(())
}

fn join(spec: &WorldSpec, token: &str, timeout: Duration) -> Result<Vec<u8>> {
    let addr = resolve(spec)?;
    let deadline = Instant::now() + timeout;
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(net(
                        &format!(
                            "rank {} could not reach rank 0 at {addr} within {timeout:?}",
                            spec.rank
                        ),
                        e,
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let mut msg = MAGIC.to_vec();
    msg.extend_from_slice(&(spec.rank as u32).to_be_bytes());
    msg.extend_from_slice(&(spec.world_size as u32).to_be_bytes());
    msg.extend_from_slice(&(token.len() as u32).to_be_bytes());
    msg.extend_from_slice(token.as_bytes());
    s.write_all(&msg).map_err(|e| net("hello", e))?;
    s.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    ))
    .map_err(|e| net("socket", e))?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status).map_err(|e| {
        net(
            &format!("rank {}: waiting for the other ranks", spec.rank),
            e,
        )
    })?;
    let body = read_bytes(&mut s, "payload")?;
    if status[0] != 0 {
        return Err(Error::Dist(format!(
            "rendezvous: rank 0 refused rank {}: {}",
            spec.rank,
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    fn spec(rank: usize, world: usize, port: u16) -> WorldSpec {
        WorldSpec {
            rank,
            world_size: world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    #[test]
    fn every_rank_receives_rank_0s_payload() -> Result<()> {
        let port = free_port();
        let id: Vec<u8> = (0..128u8).collect();
        let hs: Vec<_> = (1..4)
            .map(|r| {
                std::thread::spawn(move || {
                    share(&spec(r, 4, port), None, "cfg", Duration::from_secs(20))
                })
            })
            .collect();
        let got0 = share(
            &spec(0, 4, port),
            Some(id.clone()),
            "cfg",
            Duration::from_secs(20),
        )?;
        assert_eq!(got0, id);
        for h in hs {
            assert_eq!(h.join().expect("thread")?, id);
        }
        Ok(())
    }

    #[test]
    fn a_rank_with_another_config_is_refused_by_name() {
        let port = free_port();
        let h = std::thread::spawn(move || {
            share(&spec(1, 2, port), None, "other", Duration::from_secs(20))
        });
        let e0 = share(
            &spec(0, 2, port),
            Some(vec![1; 128]),
            "cfg",
            Duration::from_secs(20),
        )
        .unwrap_err()
        .to_string();
        let e1 = h.join().expect("thread").unwrap_err().to_string();
        assert!(
            e0.contains("rank 1") && e0.contains("different configuration"),
            "{e0}"
        );
        assert!(e1.contains("refused rank 1"), "{e1}");
    }

    #[test]
    fn missing_ranks_time_out_with_their_numbers() {
        let port = free_port();
        let e = share(
            &spec(0, 3, port),
            Some(vec![0; 4]),
            "cfg",
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ranks 1, 2 never joined"), "{e}");
        let e = share(
            &spec(1, 3, free_port()),
            None,
            "cfg",
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("could not reach rank 0"), "{e}");
    }
}
