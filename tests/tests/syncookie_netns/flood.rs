//! A spoofed flood without ACK to the cookie port, while real clients connect and close.

use super::*;

/// An `hping3` flood of spoofed segments without ACK (bare RST, bare FIN, no flags, PSH
/// alone) to the cookie port: XDP drops every one as `bad_cookie` (none reaches the host's
/// conntrack), while real clients keep connecting through the cookie path, getting their
/// answers and closing (their FINs and ACKs pass: they are verified).
#[test]
fn a_spoofed_flood_without_ack_is_dropped_while_real_clients_connect_and_close() {
    let lab = NsLab::new(POLICY, &[]);
    let _api = Gunicorn::start(&lab.topo.server, 8000).expect("starting the demo API");
    for i in 0..10 {
        lab.topo
            .add_client_addr(client(100 + i))
            .expect("client address");
    }
    let _pass = lab.pass_program_on_client();
    let client_ns = lab.topo.client.name.clone();
    let target = SERVER_V4.to_string();
    // hping3's flag options; none: no flags at all.
    let shapes: [&[&str]; 4] = [&["-R"], &["-F"], &[], &["-P", "-d", "16"]];
    let flood = std::thread::spawn(move || {
        let mut sent = 0u64;
        for flags in shapes {
            let mut args = vec![
                "hping3",
                "-q",
                "-n",
                "-c",
                "400",
                "-i",
                "u1000",
                "-p",
                "8000",
                "-a",
                "10.99.0.1",
            ];
            args.extend_from_slice(flags);
            args.push(&target);
            let out = run_in(&client_ns, &args);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // "400 packets tramitted, 0 packets received" (hping3's spelling).
            let n = text
                .split(" packets tr")
                .next()
                .and_then(|s| s.rsplit(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("hping3 {flags:?}: {text}"));
            sent += n;
        }
        sent
    });
    let dst = SocketAddr::new(IpAddr::V4(SERVER_V4), 8000);
    let codes: Vec<Option<u16>> = lab
        .topo
        .client
        .run_in(move || {
            (0..10)
                .map(|i| {
                    std::thread::sleep(Duration::from_millis(100));
                    http_get(client(100 + i), dst, "/api/items", Duration::from_secs(3))
                })
                .collect()
        })
        .expect("client namespace");
    let sent = flood.join().expect("flood thread");
    assert!(sent >= 1000, "hping3 sent {sent}");
    assert!(
        codes.iter().all(|c| *c == Some(200)),
        "real clients during the flood: {codes:?}"
    );
    let api = api_rule(&lab);
    assert_eq!(
        api["counters"]["bad_cookie"]["packets"].as_u64(),
        Some(sent),
        "every spoofed segment, and nothing of the real clients, is dropped: {api}"
    );
}
