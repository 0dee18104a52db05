//! The postern-2 reply and ack codec and the ostiary-4 check, fed
//! arbitrary bytes: never a panic, and the verifier accepts exactly the
//! replies that some configured key produced.
//!
//! Input layout: [n_keys][greeting 36][reply 48][ack 33][salt 32][rest..]
//! where `rest` supplies the key bytes (cycled) and a mutation mask.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::mac::MacKey;
use postern::secret::{Key, Password};
use postern::wire::{self, Status, Verifier, ACK_LEN, ADDR_LEN, GREETING_LEN, REPLY_LEN};
use std::net::{IpAddr, Ipv4Addr};

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let [n] = take::<1>(&mut d);
    let n_keys = usize::from(n % 6);
    let greeting: [u8; GREETING_LEN] = take(&mut d);
    let reply: [u8; REPLY_LEN] = take(&mut d);
    let ack: [u8; ACK_LEN] = take(&mut d);
    let salt: [u8; 32] = take(&mut d);
    let rest = d;

    // Distinct keys derived from the input (index mixed in).
    let keys: Vec<Key> = (0..n_keys)
        .map(|i| {
            let mut k = [0u8; 32];
            for (j, b) in k.iter_mut().enumerate() {
                *b = rest
                    .get((i * 32 + j) % rest.len().max(1))
                    .copied()
                    .unwrap_or(0);
            }
            k[0] ^= i as u8 + 1;
            k[31] = i as u8;
            Key::from_bytes(k)
        })
        .collect();
    let v = Verifier::from_keys(&keys);
    assert_eq!(v.len(), n_keys);

    // 1. Arbitrary bytes: whatever matches must really be that key's MAC.
    if let Some((i, addr)) = v.check_reply(&greeting, &reply) {
        let mk = MacKey::new(keys[i].expose());
        assert_eq!(wire::reply(&mk, &greeting, addr), reply);
    }
    let mut field = [0u8; ADDR_LEN];
    field.copy_from_slice(&reply[..ADDR_LEN]);
    let addr = wire::decode_addr(&field);
    // Re-encoding is canonical: decode(encode(decode(x))) == decode(x).
    assert_eq!(wire::decode_addr(&wire::encode_addr(addr)), addr);
    if let Some(a) = addr {
        assert_eq!(wire::canonical_ip(a), a);
    }

    // 2. Real replies verify under their own key and index, and any
    // change selected by the input breaks them.
    for (i, k) in keys.iter().enumerate() {
        let mk = MacKey::new(k.expose());
        let good = wire::reply(&mk, &greeting, addr);
        assert_eq!(v.check_reply(&greeting, &good), Some((i, addr)));
        let mut bad = good;
        for (j, m) in rest.iter().take(REPLY_LEN).enumerate() {
            bad[j] ^= m;
        }
        if bad != good {
            let got = v.check_reply(&greeting, &bad);
            // Only another key's valid MAC may match (never in practice).
            if let Some((j, a)) = got {
                let other = MacKey::new(keys[j].expose());
                assert_eq!(wire::reply(&other, &greeting, a), bad);
            }
        }
        // Acks: the arbitrary one verifies only if it is genuine.
        if let Some(answer) = wire::verify_ack(&mk, &greeting, &good, &ack) {
            assert_eq!(wire::ack(&mk, &greeting, &good, answer), ack);
        }
        for st in Status::ALL {
            let why = wire::Reason::from_byte(ack[1]);
            let answer = wire::Answer::because(st, why).with_seconds(u32::from(ack[2]));
            let a = wire::ack(&mk, &greeting, &good, answer);
            assert_eq!(wire::verify_ack(&mk, &greeting, &good, &a), Some(answer));
            let mut flipped = a;
            flipped[usize::from(rest.first().copied().unwrap_or(0)) % ACK_LEN] ^= 0x80;
            assert_ne!(wire::verify_ack(&mk, &greeting, &good, &flipped), Some(answer));
        }
    }
    let mut body = [0u8; wire::ACK_BODY_LEN];
    body.copy_from_slice(&ack[..wire::ACK_BODY_LEN]);
    let _ = wire::Answer::from_bytes(&body).map(|a| (a.status.name(), a.reason.describe()));
    // Judging any asserted address never panics, and the IPv4-mapped form
    // of an address is judged as the address itself.
    let a = addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let IpAddr::V4(v4) = a {
        assert_eq!(
            wire::asserted_allowed(a),
            wire::asserted_allowed(IpAddr::V6(v4.to_ipv6_mapped()))
        );
    }
    let _ = wire::greeting_is_valid(&greeting);

    // 3. ostiary-4: passwords of any length (including > one block).
    let pw_len = rest.len().min(200);
    let pws = [
        Password::new(rest[..pw_len].to_vec()),
        Password::new(b"Sample".to_vec()),
    ];
    let ov = Verifier::from_passwords(&pws);
    let mut or = [0u8; 32];
    or.copy_from_slice(&reply[16..]);
    if let Some(i) = ov.check_ostiary(&salt, &or) {
        assert_eq!(
            wire::ostiary_reply(&MacKey::new(pws[i].expose()), &salt),
            or
        );
    }
    let real = wire::ostiary_reply(&MacKey::new(pws[1].expose()), &salt);
    let hit = ov.check_ostiary(&salt, &real);
    assert!(hit.is_some());
});
