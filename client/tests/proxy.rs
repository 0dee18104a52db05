//! Triggers through tiny fake HTTP CONNECT and SOCKS5 proxies on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use postern::wire::Status;

/// A vector-1 server, a key file for it, and a fake proxy in front of it.
fn setup(script: ProxyScript) -> (TempDir, FakeServer, FakeProxy, String) {
    let case = postern_case(1);
    let dir = TempDir::new();
    let kf = dir.key_file("k.key", &arr32(&case["key_hex"]));
    let server = FakeServer::postern(
        arr32(&case["key_hex"]),
        greeting_of(&case),
        Script::Ack(Status::Started),
    );
    let proxy = FakeProxy::start(server.socket_addr(), script);
    let kf = kf.to_str().unwrap().to_owned();
    (dir, server, proxy, kf)
}

// Goal: HTTP CONNECT names the target in the request line and Host
// header, and the trigger goes through the tunnel.
#[test]
fn http_connect() {
    let (dir, server, proxy, kf) = setup(ProxyScript::HttpOk);
    let target = server.addr();
    let url = proxy.url("http");
    let out = postern(
        &[
            "trigger",
            &target,
            "--key-file",
            &kf,
            "--proxy",
            &url,
            "--timeout",
            "5",
        ],
        dir.path(),
        &[],
        None,
    );
    let request = String::from_utf8(proxy.finish()).unwrap();
    let reply = server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        request,
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    );
    assert_eq!(reply, unhex(&postern_case(1)["reply"]));
}

// Goal: a non-2xx CONNECT answer is "proxy refused" with the status, exit 3.
#[test]
fn http_refused() {
    let (dir, server, proxy, kf) = setup(ProxyScript::HttpStatus("HTTP/1.1 403 Forbidden"));
    let url = proxy.url("http");
    let out = postern(
        &["trigger", "192.0.2.1", "--key-file", &kf, "--proxy", &url],
        dir.path(),
        &[],
        None,
    );
    proxy.finish();
    drop(server);
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains("proxy refused: HTTP 403 Forbidden"),
        "{}",
        stdout(&out)
    );
}

// Goal: a CONNECT response header over 8 KiB is refused clearly.
#[test]
fn http_header_bound() {
    let (dir, _server, proxy, kf) = setup(ProxyScript::HttpHuge);
    let url = proxy.url("http");
    let out = postern(
        &["trigger", "192.0.2.1", "--key-file", &kf, "--proxy", &url],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains("proxy response header is longer than 8 KiB"),
        "{}",
        stdout(&out)
    );
    proxy.finish();
}

// Goal: SOCKS5 sends an IP target as an IPv4 address and a name as a
// domain name, and the trigger goes through.
#[test]
fn socks5_ip_and_name() {
    let (dir, server, proxy, kf) = setup(ProxyScript::SocksOk);
    let url = proxy.url("socks5");
    let port = server.port;
    let out = postern(
        &[
            "trigger",
            &server.addr(),
            "--key-file",
            &kf,
            "--proxy",
            &url,
        ],
        dir.path(),
        &[],
        None,
    );
    let req = proxy.finish();
    server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let mut want = vec![5, 1, 0, 1, 127, 0, 0, 1];
    want.extend_from_slice(&port.to_be_bytes());
    assert_eq!(req, want);

    let (dir, server, proxy, kf) = setup(ProxyScript::SocksOk);
    let url = proxy.url("socks5");
    let port = server.port;
    let target = format!("localhost:{port}");
    let out = postern(
        &["trigger", &target, "--key-file", &kf, "--proxy", &url],
        dir.path(),
        &[],
        None,
    );
    let req = proxy.finish();
    server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{target}: accepted; the action started\n")
    );
    let mut want = vec![5, 1, 0, 3, 9];
    want.extend_from_slice(b"localhost");
    want.extend_from_slice(&port.to_be_bytes());
    assert_eq!(req, want);
}

// Goal: SOCKS5 refusals name the RFC 1928 reason, and a proxy that wants
// authentication is reported as such; both exit 3.
#[test]
fn socks5_refusals() {
    let (dir, _server, proxy, kf) = setup(ProxyScript::SocksReply(2));
    let url = proxy.url("socks5");
    let out = postern(
        &["trigger", "192.0.2.1", "--key-file", &kf, "--proxy", &url],
        dir.path(),
        &[],
        None,
    );
    proxy.finish();
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains("proxy refused: SOCKS5 connection not allowed by ruleset (reply 2)"),
        "{}",
        stdout(&out)
    );

    let (dir, _server, proxy, kf) = setup(ProxyScript::SocksAuthOnly);
    let url = proxy.url("socks5");
    let out = postern(
        &["trigger", "192.0.2.1", "--key-file", &kf, "--proxy", &url],
        dir.path(),
        &[],
        None,
    );
    proxy.finish();
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains("SOCKS5 authentication required"),
        "{}",
        stdout(&out)
    );
}

// Goal: an unreachable proxy is reported as the proxy's failure, exit 3.
#[test]
fn proxy_unreachable() {
    let dir = TempDir::new();
    let kf = dir.key_file("k.key", &[1; 32]);
    let url = format!("socks5://127.0.0.1:{}", closed_port());
    let out = postern(
        &[
            "trigger",
            "192.0.2.1",
            "--key-file",
            kf.to_str().unwrap(),
            "--proxy",
            &url,
        ],
        dir.path(),
        &[],
        None,
    );
    assert_eq!(code(&out), 3);
    assert!(
        stdout(&out).contains(&format!(
            "connection failed: proxy {url}: connection refused"
        )),
        "{}",
        stdout(&out)
    );
}

// Goal: a proxy set per host in the inventory is used.
#[test]
fn inventory_proxy() {
    let (dir, server, proxy, kf) = setup(ProxyScript::SocksOk);
    let inv = dir.file(
        "hosts.toml",
        format!(
            "[hosts.web-9]\naddress = \"127.0.0.1\"\nport = {}\nproxy = \"{}\"\n[hosts.web-9.actions.console]\nkey_file = \"{kf}\"\n",
            server.port,
            proxy.url("socks5")
        )
        .as_bytes(),
        0o644,
    );
    let out = postern(
        &[
            "trigger",
            "web-9",
            "console",
            "--inventory",
            inv.to_str().unwrap(),
        ],
        dir.path(),
        &[],
        None,
    );
    let req = proxy.finish();
    server.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "web-9: accepted; console started\n");
    assert_eq!(req[3], 1, "IPv4 target expected");
}

// Goal: in a group, proxied hosts (SOCKS5 and HTTP CONNECT, set per host)
// run beside a direct host, each through its own proxy, and all succeed.
#[test]
fn group_with_proxied_hosts() {
    let (dir, socks_server, socks, kf) = setup(ProxyScript::SocksOk);
    let (_dir2, http_server, http, _) = setup(ProxyScript::HttpOk);
    let case = postern_case(1);
    let direct = FakeServer::postern(
        arr32(&case["key_hex"]),
        greeting_of(&case),
        Script::Ack(Status::Started),
    );
    let entry = |name: &str, port: u16, proxy: &str| {
        format!(
            "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {port}\nproxy = \"{proxy}\"\n[hosts.{name}.actions.console]\nkey_file = \"{kf}\"\n"
        )
    };
    let inv = dir.file(
        "hosts.toml",
        format!(
            "{}{}{}[groups]\nmix = [\"via-socks\", \"via-http\", \"direct\"]\n",
            entry("via-socks", socks_server.port, &socks.url("socks5")),
            entry("via-http", http_server.port, &http.url("http")),
            entry("direct", direct.port, "none"),
        )
        .as_bytes(),
        0o644,
    );
    let out = postern(
        &[
            "trigger",
            "@mix",
            "console",
            "--inventory",
            inv.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
        &[],
        None,
    );
    let http_port = http_server.port;
    let socks_req = socks.finish();
    let http_req = String::from_utf8(http.finish()).unwrap();
    socks_server.finish();
    http_server.finish();
    direct.finish();
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let s = stdout(&out);
    assert_eq!(s.matches("\"outcome\":\"started\"").count(), 3, "{s}");
    assert_eq!(socks_req[3], 1, "IPv4 target expected");
    assert!(
        http_req.starts_with(&format!("CONNECT 127.0.0.1:{http_port} ")),
        "{http_req}"
    );
}
