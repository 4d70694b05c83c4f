//! A misbehaving `disco serve` for the tests (tests/hostile_server.rs): it
//! speaks the wire protocol with correct hashes for the tree at `--root`
//! and misbehaves on purpose, as `MODE` says. Never installed; built by
//! `cargo test` as an example.
//!
//! Usage: fake_serve MODE --root DIR
//! MODEs: hang-after-hello, hang-in-listing, hang-in-data, bad-md5,
//! content-mismatch, dotdot, forged-text.

use std::io::{stdin, stdout, BufReader, BufWriter};
use std::path::PathBuf;

use disco::names::Name;
use disco::transport::manifest::dir_hash;
use disco::transport::wire::{Listing, Msg, Wire, VERSION};
use disco::transport::View;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let root = PathBuf::from(args.get(3).cloned().unwrap_or_default());
    let mut wire = Wire::new(BufReader::new(stdin()), BufWriter::new(stdout()));
    let Ok((Msg::Hello { node, .. }, _)) = wire.recv() else {
        return;
    };
    // Silent, but gone when the client is: sshd closes our stdin when the
    // connection ends (a sleep would outlive the test, sshd's session with it).
    let hang = || -> ! {
        let mut sink = [0u8; 4096];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
        std::process::exit(0)
    };
    if mode == "hang-after-hello" {
        hang();
    }
    let node = Name::parse(&node, "node").expect("a node name");
    let view = View::of(&root, &node).expect("a tree");
    let mut manifest = view.manifest.clone();
    if mode == "bad-md5" || mode == "dotdot" {
        // Corrupt one file entry of the deepest listing, then rehash the
        // listings up to the root so every hash the client checks agrees.
        let dir = manifest
            .dirs
            .iter()
            .filter(|(_, es)| es.iter().any(|e| e.kind == 'f'))
            .map(|(d, _)| d.clone())
            .max_by_key(|d| d.matches('/').count())
            .expect("a file");
        let entries = manifest.dirs.get_mut(&dir).unwrap();
        let e = entries.iter_mut().find(|e| e.kind == 'f').unwrap();
        if mode == "bad-md5" {
            e.hash = "not-an-md5\nerror: forged".into();
        } else {
            e.name = "..".into();
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut d = dir;
        loop {
            let hash = dir_hash(&manifest.dirs[&d]);
            let Some((parent, name)) = d
                .rsplit_once('/')
                .map(|(p, n)| (p.to_string(), n.to_string()))
                .or_else(|| (!d.is_empty()).then(|| (String::new(), d.clone())))
            else {
                break;
            };
            let pe = manifest.dirs.get_mut(&parent).unwrap();
            pe.iter_mut().find(|e| e.name == name).unwrap().hash = hash;
            d = parent;
        }
    }
    let snapshot = if mode == "forged-text" {
        "s1\ninfo: noop: 0 change(s)\x1b[3A\x1b[J".to_string()
    } else {
        "fake".to_string()
    };
    let _ = wire.say(
        &Msg::Welcome {
            version: VERSION,
            node: node.to_string(),
            snapshot,
            root: manifest.root_hash(),
            candidate: None,
        },
        &[],
    );
    let mut pending: Vec<String> = Vec::new();
    loop {
        let Ok((msg, _)) = wire.recv() else { return };
        match msg {
            Msg::List { paths } => {
                if mode == "hang-in-listing" {
                    hang();
                }
                if mode == "forged-text" {
                    let _ = wire.say(
                        &Msg::Error {
                            message: "no\nerror: everything is fine\x1b[2J".repeat(1000),
                        },
                        &[],
                    );
                    return;
                }
                let dirs = paths
                    .iter()
                    .map(|p| Listing {
                        path: p.clone(),
                        entries: manifest.dirs.get(p).cloned().unwrap_or_default(),
                    })
                    .collect();
                let _ = wire.say(&Msg::Listings { dirs }, &[]);
            }
            Msg::Get { path } | Msg::Delta { path } => pending.push(path),
            Msg::Flush => {
                for path in pending.drain(..) {
                    let e = manifest.entry(&path).unwrap().clone();
                    let _ = wire.send(
                        &Msg::File {
                            path: path.clone(),
                            size: e.size,
                            md5: e.hash.clone(),
                        },
                        &[],
                    );
                    let (dir, rel) = view.file(&path).unwrap();
                    let mut data = std::fs::read(dir.join(rel)).unwrap();
                    if mode == "hang-in-data" {
                        let _ = wire.send(&Msg::Data, &data[..data.len() / 2]);
                        let _ = wire.flush();
                        hang();
                    }
                    if mode == "content-mismatch" {
                        for b in data.iter_mut() {
                            *b = b'X';
                        }
                    }
                    let _ = wire.send(&Msg::Data, &data);
                }
                let _ = wire.flush();
            }
            Msg::Bye => return,
            _ => return,
        }
    }
}
