//! The monitor <-> network codec. Network -> monitor requests are the
//! privilege boundary: any REQUEST_LEN bytes either decode into a request whose
//! fields are in range and which re-encodes to the same bytes, or are
//! refused. Monitor -> network messages decode without panics and decode
//! the same after a re-encode.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use postern::ipc::{Down, Request, NONCE_BATCH, REQUEST_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let listeners = usize::from(sel & 0x0f);

    // Requests: fixed length, so the untrusted side has to get every
    // byte right. Try the body as it is and padded/cut to REQUEST_LEN.
    let mut fixed = [0u8; REQUEST_LEN];
    let n = body.len().min(REQUEST_LEN);
    fixed[..n].copy_from_slice(&body[..n]);
    for bytes in [body, &fixed[..]] {
        if let Ok(req) = Request::decode(bytes, listeners) {
            assert_eq!(bytes.len(), REQUEST_LEN);
            // Every request carries the config generation it was made
            // under (a verify holds it in its fields; the others beside them).
            let generation = Request::generation_of(bytes).expect("a whole request");
            assert_eq!(
                &req.encode_for(generation)[..],
                bytes,
                "decode is injective"
            );
            let peer = match req {
                Request::Verify { handle, peer, .. } => {
                    assert_ne!(handle, 0, "a verify names a nonce");
                    peer
                }
                Request::Nonces { count } => {
                    assert!(count >= 1 && usize::from(count) <= NONCE_BATCH);
                    continue;
                }
                Request::Connection { handle } => {
                    assert_ne!(handle, 0, "a connection names a verified reply");
                    continue;
                }
                Request::Fail { peer, .. }
                | Request::Lockout { peer, .. }
                | Request::Notice { peer, .. } => peer,
            };
            assert!(usize::from(peer.listener) < listeners);
            // Source addresses come out canonical (IPv4-mapped folded).
            if let IpAddr::V6(v6) = peer.addr {
                assert!(v6.to_ipv4_mapped().is_none());
            }
            // What the monitor does with a source: key it and print it.
            let _ = postern::net::limits::SourceKey::of(peer.addr).to_string();
        }
    }

    // Down messages: any length up to the channel's maximum.
    if let Some(msg) = Down::decode(body) {
        let again = msg.encode();
        let twice = Down::decode(&again).expect("an encoded message decodes");
        assert_eq!(again, twice.encode(), "encode(decode(x)) is stable");
        match &msg {
            Down::Exempt(net) => {
                // The network process matches every source against it.
                let _ = net.contains(IpAddr::from([192, 0, 2, 1]));
                let _ = net.contains("2001:db8::1".parse::<IpAddr>().expect("literal"));
                let _ = net.contains(net.addr);
            }
            Down::Begin { limits, .. } => {
                assert!(limits.max_handshakes.get() > 0);
            }
            Down::Carry(records) => {
                // A replacement network process imports every record into
                // its table, which keeps its bound and its limits.
                let mut table = postern::net::limits::SourceTable::new(&small_limits());
                let now = std::time::Instant::now();
                for r in records {
                    table.import(r, now);
                    assert!(table.len() <= table.capacity());
                }
                let _ = table.export(now);
            }
            Down::Nonces(list) => {
                assert!(list.len() <= NONCE_BATCH);
                assert!(list.iter().all(|(h, _)| *h != 0));
            }
            _ => {}
        }
        let _ = format!("{msg:?}");
    }
});

fn small_limits() -> postern::config::Limits {
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::time::Duration;
    let one = NonZeroU32::MIN;
    postern::config::Limits {
        handshake_timeout: Duration::from_secs(5),
        max_handshakes: NonZeroUsize::MIN,
        rate_burst: one,
        rate_per_minute: one,
        lockout_after: one,
        lockout_duration: Duration::from_secs(60),
        lockout_table: NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN),
        verify_per_second: one,
        exempt: Vec::new(),
    }
}
