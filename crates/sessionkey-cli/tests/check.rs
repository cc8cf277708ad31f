//! `sessionkey check FILE` (issue 16, item 1): clean tunnel and VPN files pass (exit 0);
//! each class of mistake is reported as `FILE:LINE: field: ...` at the line it is on, all
//! of them in one run, with exit 78. Nothing is started and nothing is written.

use std::fs;
use std::os::unix::fs::PermissionsExt;

mod support;

use support::*;

struct World {
    env: Env,
    server: Key,
    client: Key,
}

impl World {
    fn new(tag: &str) -> Self {
        let env = Env::new(tag);
        let server = env.keygen("server");
        let client = env.keygen("client");
        fs::write(
            env.path("authorized"),
            format!("# clients\n{} alice\n", client.public),
        )
        .unwrap();
        let psk = env.path("good.psk");
        fs::write(&psk, "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=\n").unwrap();
        fs::set_permissions(&psk, fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            env,
            server,
            client,
        }
    }

    /// A clean two-tunnel file, with `{server_key}` and friends filled in.
    fn good_tunnels(&self) -> String {
        format!(
            "# a server and a client\n\
             [[tunnel]]\n\
             role = \"server\"\n\
             name = \"web\"\n\
             listen = \"0.0.0.0:7000\"\n\
             to = \"127.0.0.1:8080\"\n\
             key = \"{server}\"\n\
             authorized_peers = \"{authorized}\"\n\
             psk = \"{psk}\"\n\
             suite = \"chacha20-poly1305\"\n\
             max_handshakes = 64\n\
             \n\
             [[tunnel]]\n\
             role = \"client\"\n\
             name = \"db\"\n\
             listen = \"127.0.0.1:5432\"\n\
             server = \"db.example.com:7001\"\n\
             key = \"{client}\"\n\
             server_key = \"{server_pub}\"\n",
            server = self.server.file(),
            client = self.client.file(),
            authorized = self.env.path("authorized").display(),
            psk = self.env.path("good.psk").display(),
            server_pub = self.server.base64(),
        )
    }

    fn check(&self, name: &str, text: &str) -> Output {
        let path = self.env.path(name);
        fs::write(&path, text).unwrap();
        self.env.run(&["check", path.to_str().unwrap()])
    }
}

/// The `LINE: field` of each problem line of `stderr` for `file`.
fn located(stderr: &str, file: &str) -> Vec<(usize, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(&format!("{file}:"))?.1;
            let (line, rest) = rest.split_once(": ")?;
            let (field, _) = rest.split_once(": ")?;
            Some((line.parse().ok()?, field.to_string()))
        })
        .collect()
}

#[test]
fn a_clean_tunnel_file_passes() {
    let w = World::new("check-good");
    let out = w.check("good.toml", &w.good_tunnels());
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("ok: 2 tunnel(s)"), "{out:?}");
    // Nothing was started or written beside the file.
    assert!(!w.env.path("good.toml.lock").exists());
}

#[test]
fn every_tunnel_mistake_is_reported_at_its_line() {
    let w = World::new("check-bad");
    let loose_key = w.env.path("loose.key");
    fs::copy(&w.server.path, &loose_key).unwrap();
    fs::set_permissions(&loose_key, fs::Permissions::from_mode(0o644)).unwrap();
    let loose_psk = w.env.path("loose.psk");
    fs::copy(w.env.path("good.psk"), &loose_psk).unwrap();
    fs::set_permissions(&loose_psk, fs::Permissions::from_mode(0o644)).unwrap();
    let short_psk = w.env.path("short.psk");
    fs::write(&short_psk, "c2hvcnQ=\n").unwrap();
    fs::set_permissions(&short_psk, fs::Permissions::from_mode(0o600)).unwrap();
    let bad_authorized = w.env.path("bad-authorized");
    fs::write(&bad_authorized, "# ok\nssh-ed25519 AAAA bob\n").unwrap();
    let text = format!(
        "colour = \"blue\"\n\
         [[tunnel]]\n\
         role = \"server\"\n\
         name = \"web\"\n\
         listen = \"0.0.0.0:70000\"\n\
         to = \"127.0.0.1\"\n\
         key = \"{loose}\"\n\
         psk = \"{loose_psk}\"\n\
         sever_key = \"x\"\n\
         suite = \"rot13\"\n\
         max_handshakes = 0\n\
         classic = \"yes\"\n\
         authorized_peers = \"{bad_authorized}\"\n\
         server_key = \"k\"\n\
         \n\
         [[tunnel]]\n\
         role = \"client\"\n\
         name = \"web\"\n\
         listen = \"myhost:8080\"\n\
         server = \"db:7001\"\n\
         key = \"{missing}\"\n\
         psk = \"{short_psk}\"\n\
         transport = \"quic\"\n\
         server_key = \"sessionkey-x25519 not-base64\"\n\
         cert = \"{missing}\"\n\
         \n\
         [[tunnel]]\n\
         role = \"gateway\"\n\
         \n\
         [[tunnel]]\n\
         listen = \"0.0.0.0:1\"\n\
         \n\
         [[tunnel]]\n\
         role = \"client\"\n\
         listen = \"127.0.0.1:8080\"\n\
         name = \"pg\"\n\
         \n\
         [[tunnel]]\n\
         role = \"client\"\n\
         listen = \"127.0.0.1:8080\"\n\
         server = \"h:1\"\n\
         insecure_anonymous = true\n",
        loose = loose_key.display(),
        loose_psk = loose_psk.display(),
        bad_authorized = bad_authorized.display(),
        missing = w.env.path("missing").display(),
        short_psk = short_psk.display(),
    );
    let out = w.check("bad.toml", &text);
    assert_eq!(out.code, Some(78), "{out:?}");
    let got = located(&out.stderr, "bad.toml");
    let want: Vec<(usize, String)> = [
        (1, "colour"),
        (5, "tunnel[0].listen"),
        (6, "tunnel[0].to"),
        (7, "tunnel[0].key"),
        (8, "tunnel[0].psk"),
        (9, "tunnel[0].sever_key"),
        (10, "tunnel[0].suite"),
        (11, "tunnel[0].max_handshakes"),
        (12, "tunnel[0].classic"),
        (13, "tunnel[0].authorized_peers"),
        (14, "tunnel[0].server_key"),
        (18, "tunnel[1].name"),
        (19, "tunnel[1].listen"),
        (21, "tunnel[1].key"),
        (22, "tunnel[1].psk"),
        (23, "tunnel[1].transport"),
        (24, "tunnel[1].server_key"),
        (25, "tunnel[1].cert"),
        (28, "tunnel[2].role"),
        (31, "tunnel[3].role"),
        (34, "tunnel[4].server"),
        (40, "tunnel[5].listen"),
    ]
    .into_iter()
    .map(|(l, f)| (l, f.to_string()))
    .collect();
    assert_eq!(got, want, "{}", out.stderr);
    // What and the fix, in words.
    for needle in [
        "did you mean server_key?",
        "a client field, not a server one",
        "chmod 600",
        "sessionkey keygen -o",
        "choose one of: aes-256-gcm",
        "is not a port",
        "has no port",
        "listen on an IP address",
        "is also the name of tunnel[0]",
        "is also where tunnel[4] listens",
        "add role = \"server\" or role = \"client\"",
        "missing: add server = ",
        "head -c 32 /dev/urandom",
        "22 problems",
    ] {
        assert!(
            out.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn start_up_refusals_are_caught_too() {
    // Fields all valid, but the server admits nobody: `tunnel --config` would exit 78.
    let w = World::new("check-build");
    let text = format!(
        "[[tunnel]]\nrole = \"server\"\nlisten = \"0.0.0.0:7000\"\nto = \"127.0.0.1:80\"\nkey = \"{}\"\n",
        w.server.file()
    );
    let out = w.check("nobody.toml", &text);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert_eq!(
        located(&out.stderr, "nobody.toml"),
        vec![(2, "tunnel[0]".to_string())]
    );
    assert!(
        out.stderr.contains("no client key is authorized"),
        "{}",
        out.stderr
    );
}

#[test]
fn syntax_errors_and_empty_files_are_located() {
    let w = World::new("check-syntax");
    let out = w.check("syntax.toml", "[[tunnel]]\nrole = \"server\"\nlisten = \n");
    assert_eq!(out.code, Some(78), "{out:?}");
    assert_eq!(
        located(&out.stderr, "syntax.toml"),
        vec![(3, "syntax".to_string())]
    );
    let out = w.check("empty.toml", "# nothing yet\n");
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(
        out.stderr.contains("no [[tunnel]] tables"),
        "{}",
        out.stderr
    );
    let out = w
        .env
        .run(&["check", w.env.path("absent.toml").to_str().unwrap()]);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(
        out.stderr.contains("absent.toml:0: file: cannot read it"),
        "{}",
        out.stderr
    );
}

#[test]
fn tunnel_config_names_the_line_of_an_unknown_field() {
    // Before: `line 1, column 1` for any unknown key.
    let w = World::new("check-run");
    let mut text = w.good_tunnels();
    text.push_str("colour = \"blue\"\n");
    let path = w.env.path("run.toml");
    fs::write(&path, &text).unwrap();
    let out = w.env.run(&["tunnel", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(
        out.stderr
            .contains("run.toml:20: tunnel[1].colour: unknown field"),
        "{}",
        out.stderr
    );
}

#[test]
fn vpn_files_pass_or_name_their_line_and_field() {
    let w = World::new("check-vpn");
    let good = format!(
        "[interface]\nprivate_key_file = \"{}\"\naddress = [\"10.8.0.1/24\"]\nlisten_port = 51820\n\n\
         [[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.8.0.2/32\"]\n",
        w.server.file(),
        w.client.public
    );
    let out = w.check("site-a.toml", &good);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("ok: VPN site-a with 1 peer(s)"),
        "{out:?}"
    );

    let bad_address = good.replace("10.8.0.1/24", "10.8.0.300/24");
    let out = w.check("site-b.toml", &bad_address);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert_eq!(
        located(&out.stderr, "site-b.toml"),
        vec![(3, "interface.address".to_string())],
        "{}",
        out.stderr
    );

    let unknown = good.replace("allowed_ips", "colour = 1\nallowed_ips");
    let out = w.check("site-c.toml", &unknown);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert_eq!(
        located(&out.stderr, "site-c.toml"),
        vec![(8, "colour".to_string())],
        "{}",
        out.stderr
    );
}
