//! A captured cookie ACK replayed by an attacker: it verifies no other address, and opens
//! nothing from another source port or to another rule's port.

use super::*;

/// Two `syncookie` rules, a budget of one token an hour each, sources verified for 1 s only
/// (so that a replay from the client's own address is checked in XDP, not waved through).
const TWO_RULES: &str = r#"
[defaults]
verified_ttl = "1s"

[[rule]]
name = "api"
protocol = "tcp"
ports = [8000]
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"

[[rule]]
name = "other"
protocol = "tcp"
ports = [8001]
unverified = { rate = "1/h", burst = 1 }
challenge = "syncookie"
"#;

/// Connects from `src` to the server's port 8000 and returns (source port, the SYN-ACK's
/// sequence number: the cookie, and its acknowledgment number: the client's ISN + 1), read
/// off the client's veth with a packet socket. Runs in the client namespace.
fn handshake(src: Ipv4Addr) -> (u16, u32, u32) {
    use std::io::{Read, Write};
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    let ifindex = shield_user::loader::if_index(netlab::CLIENT_IF).expect("client veth");
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        let r = libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())
        .expect("bind");
    s.connect_timeout(
        &SocketAddr::new(IpAddr::V4(SERVER_V4), 8000).into(),
        Duration::from_secs(3),
    )
    .expect("the real client connects");
    let sport = s
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("inet")
        .port();
    let mut stream: std::net::TcpStream = s.into();
    let _ = stream.write_all(b"hello");
    let _ = stream.read(&mut [0u8; 16]);
    drop(stream);
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let found = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no SYN-ACK to {src}:{sport} seen on the client veth"
        );
        // SAFETY: reads into a buffer of the length given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 54 || buf[12..14] != [0x08, 0x00] || buf[23] != 6 {
            continue;
        }
        let ihl = usize::from(buf[14] & 0xf) * 4;
        let tcp = &buf[14 + ihl..n as usize];
        let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if buf[30..34] == src.octets() && be16(&tcp[2..4]) == sport && tcp[13] & 0x12 == 0x12 {
            break (sport, be32(&tcp[4..8]), be32(&tcp[8..12]));
        }
    };
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
    found
}

/// Sends one bare ACK (`hping3`) from `src:sport` to the server's `dport`.
fn ack(lab: &NsLab, src: Ipv4Addr, sport: u16, dport: u16, seq: u32, ack: u32) {
    let out = run_in(
        &lab.topo.client.name,
        &[
            "hping3",
            "-q",
            "-n",
            "-c",
            "1",
            "-A",
            "-a",
            &src.to_string(),
            "-s",
            &sport.to_string(),
            "-k",
            "-p",
            &dport.to_string(),
            "-M",
            &seq.to_string(),
            "-L",
            &ack.to_string(),
            &SERVER_V4.to_string(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // ("1 packets transmitted, 0 packets received": its exit status says nothing came back.)
    assert!(text.contains("1 packets tra"), "hping3: {text}");
}

fn verifications(lab: &NsLab) -> u64 {
    lab.stats()["interfaces"][0]["verifications"]
        .as_u64()
        .expect("verifications in the stats")
}

/// Waits until `what` holds of the stats (the counters are read, not slept on).
fn until(lab: &NsLab, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = lab.stats();
        if ok(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real client's cookie handshake, captured; its last ACK replayed: from the client's own
/// address and port it is a valid cookie (XDP verifies the source again), from another
/// address, another source port or to the other rule's port it is `bad_cookie` and
/// verifies nothing.
#[test]
fn a_replayed_cookie_ack_verifies_no_other_source_port_or_rule() {
    let lab = NsLab::new(TWO_RULES, &[8000, 8001]);
    let (real, replayer) = (
        Ipv4Addr::from(u32::from(POOL_V4.0) + 3000),
        Ipv4Addr::from(u32::from(POOL_V4.0) + 3001),
    );
    lab.topo
        .add_client_addr(IpAddr::V4(real))
        .expect("client address");
    lab.topo
        .add_client_addr(IpAddr::V4(replayer))
        .expect("client address");
    let _pass = lab.pass_program_on_client();
    let (sport, cookie, isn1) = lab
        .topo
        .client
        .run_in(|| handshake(real))
        .expect("client namespace");
    let (seq, ackn) = (isn1, cookie.wrapping_add(1));
    // The source's proof lapses (1 s): from now on its ACKs are checked in XDP.
    std::thread::sleep(Duration::from_millis(1500));
    let bad =
        |s: &serde_json::Value, rule: &str| shield_tests::nslab::counter(s, rule, "bad_cookie");
    let before = lab.stats();
    let v0 = verifications(&lab);
    // Another address, another source port, another rule's port.
    ack(&lab, replayer, sport, 8000, seq, ackn);
    ack(&lab, real, sport.wrapping_add(1), 8000, seq, ackn);
    ack(&lab, replayer, sport, 8001, seq, ackn);
    let after = until(&lab, "three replays dropped as bad_cookie", |s| {
        bad(s, "api") >= bad(&before, "api") + 2 && bad(s, "other") > bad(&before, "other")
    });
    assert_eq!(bad(&after, "api"), bad(&before, "api") + 2, "{after}");
    assert_eq!(bad(&after, "other"), bad(&before, "other") + 1, "{after}");
    assert_eq!(
        verifications(&lab),
        v0,
        "a replayed cookie verified a source it was not made for"
    );
    // The control, last (it verifies the source again): the same ACK from the same 4-tuple is a valid cookie.
    ack(&lab, real, sport, 8000, seq, ackn);
    until(
        &lab,
        "the captured ACK, replayed unchanged, verifies its own source",
        |s| s["interfaces"][0]["verifications"].as_u64() > Some(v0),
    );
}
