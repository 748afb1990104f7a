use super::*;

enum E<'a> {
    F(&'a str, &'a [u8]),
    D(&'a str),
    L(&'a str, &'a str),
    H(&'a str, &'a str),
    Chr(&'a str, u32, u32),
    Fifo(&'a str),
    /// A header whose name bytes are written raw (bypassing the tar crate's checks).
    Raw(&'a str, u64),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_mode(0o644);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_size(0);
        match e {
            E::F(p, d) => {
                h.set_size(d.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, p, *d).unwrap();
            }
            E::D(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::L(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::H(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Chr(p, a, m) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_device_major(*a).unwrap();
                h.set_device_minor(*m).unwrap();
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::Raw(p, size) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.as_old_mut().name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_size(*size);
                h.set_cksum();
                let data = vec![0u8; (*size).min(16) as usize];
                b.append(&h, &data[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    Fx { _dir: dir, store }
}

impl Fx {
    fn apply(&self, tree: &mut Tree, bytes: &[u8]) -> Result<(), TreeError> {
        let d = self.store.put_bytes("layer", bytes, None).unwrap();
        tree.apply_layer(
            d,
            io::Cursor::new(bytes),
            ApplyOptions {
                clamp_mtime: Some(0),
            },
        )
    }
    fn build(&self, layers: &[Vec<u8>]) -> Tree {
        let mut t = Tree::new();
        for l in layers {
            self.apply(&mut t, l).unwrap_or_else(|e| panic!("{e}"));
        }
        t
    }
    fn cpio(&self, t: &Tree) -> Vec<u8> {
        let mut w = NewcWriter::new(Vec::new());
        let mut ino = 0;
        t.write_newc("", 0, &self.store, &mut w, &mut ino).unwrap();
        w.finish().unwrap()
    }
}

fn paths(t: &Tree) -> Vec<&str> {
    t.nodes().keys().map(String::as_str).collect()
}

#[test]
fn files_dirs_symlinks_and_implicit_parents() {
    let f = fx();
    let t = f.build(&[layer(&[
        E::F("./usr/bin/tool", b"x"),
        E::L("bin", "usr/bin"),
        E::D("etc"),
    ])]);
    assert_eq!(paths(&t), ["bin", "etc", "usr", "usr/bin", "usr/bin/tool"]);
    assert_eq!(t.get("bin").unwrap().kind, Kind::Symlink("usr/bin".into()));
    assert_eq!(
        t.get("usr/bin/tool").unwrap().mtime,
        0,
        "clamped to the epoch"
    );
    assert_eq!(t.get("usr/bin/tool").unwrap().uid, 1000);
    // A later layer writing through the symlink lands in its target (usrmerge images do this).
    let t = f.build(&[
        layer(&[E::D("usr/bin"), E::L("bin", "usr/bin")]),
        layer(&[E::F("bin/sh", b"sh")]),
    ]);
    assert!(t.get("usr/bin/sh").is_some() && t.get("bin/sh").is_none());
}

#[test]
fn whiteouts_and_opaque_directories() {
    let f = fx();
    let lower = layer(&[
        E::F("a/keep", b"1"),
        E::F("a/gone", b"2"),
        E::F("d/x/y", b"3"),
        E::F("o/old", b"4"),
        E::F("a-b", b"5"),
    ]);
    let upper = layer(&[
        E::F("a/.wh.gone", b""),
        E::F(".wh.d", b""),
        E::F("o/new", b"n"),
        E::F("o/.wh..wh..opq", b""),
    ]);
    let t = f.build(&[lower, upper]);
    assert_eq!(paths(&t), ["a", "a-b", "a/keep", "o", "o/new"]);
}

#[test]
fn later_file_replaces_a_directory_subtree() {
    let f = fx();
    let t = f.build(&[
        layer(&[E::F("x/y/z", b"1")]),
        layer(&[E::F("x", b"now a file")]),
    ]);
    assert_eq!(paths(&t), ["x"]);
}

#[test]
fn hostile_layers_are_rejected() {
    let f = fx();
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![layer(&[E::Raw("/etc/passwd", 1)])], "absolute path"),
        (vec![layer(&[E::Raw("a/../../etc/passwd", 1)])], "'..'"),
        (
            vec![
                layer(&[E::L("evil", "../../..")]),
                layer(&[E::F("evil/etc/passwd", b"x")]),
            ],
            "climbs out",
        ),
        (
            vec![
                layer(&[E::L("loop", "loop")]),
                layer(&[E::F("loop/x", b"x")]),
            ],
            "too many levels",
        ),
        (
            vec![layer(&[E::H("link", "missing")])],
            "not a regular file",
        ),
        (vec![layer(&[E::Raw("huge", 1 << 40)])], "exceeds"),
    ];
    for (layers, want) in cases {
        let mut t = Tree::new();
        let mut err = None;
        for l in &layers {
            if let Err(e) = f.apply(&mut t, l) {
                err = Some(e.to_string());
                break;
            }
        }
        let err = err.unwrap_or_else(|| panic!("accepted a hostile layer ({want})"));
        assert!(err.contains(want), "{err} (wanted {want:?})");
    }
}

#[test]
fn long_names_survive() {
    let f = fx();
    let long = format!("{}/file", "d".repeat(150));
    let t = f.build(&[layer(&[E::F(&long, b"x")])]);
    assert!(t.get(&long).is_some());
}

fn have(bin: &str) -> bool {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .is_ok()
}

/// GNU cpio lists and extracts what we wrote: modes, symlinks, hard links, device nodes.
#[test]
fn gnu_cpio_reads_our_newc() {
    assert!(have("cpio"), "GNU cpio is needed (apt-get install cpio)");
    let f = fx();
    let t = f.build(&[layer(&[
        E::D("bin"),
        E::F("bin/tool", b"#!/bin/sh\n"),
        E::H("bin/alias", "bin/tool"),
        E::H("bin/zz-alias", "bin/tool"),
        E::L("sh", "bin/tool"),
        E::Chr("dev/null", 1, 3),
        E::Fifo("run/fifo"),
    ])]);
    let archive = f.cpio(&t);
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.cpio");
    std::fs::write(&a, &archive).unwrap();
    let out = std::process::Command::new("cpio")
        .args(["-itv", "--quiet", "-F"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for (name, kind) in [
        ("bin/tool", "-rw-r--r--"),
        ("sh -> bin/tool", "lrwxrwxrwx"),
        ("dev/null", "crw-r--r--"),
        ("run/fifo", "prw-r--r--"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(kind) && l.ends_with(name)),
            "{name} as {kind} in\n{listing}"
        );
    }
    // Extract the regular files and links (no device nodes) and check data and inode sharing.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let out = std::process::Command::new("cpio")
        .current_dir(&x)
        .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&a)
        .args(["bin/*", "sh"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::MetadataExt;
    let m1 = std::fs::metadata(x.join("bin/tool")).unwrap();
    let m2 = std::fs::metadata(x.join("bin/alias")).unwrap();
    let m3 = std::fs::metadata(x.join("bin/zz-alias")).unwrap();
    assert_eq!(std::fs::read(x.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        (m1.ino(), m1.nlink()),
        (m2.ino(), 3),
        "hard links kept as hard links"
    );
    assert_eq!(m1.ino(), m3.ino());
    assert_eq!(
        std::fs::read_link(x.join("sh")).unwrap().to_str(),
        Some("bin/tool")
    );
}

#[test]
fn serialisation_is_deterministic_and_prefixable() {
    let f = fx();
    let l = layer(&[E::F("b", b"2"), E::F("a", b"1")]);
    let t1 = f.build(std::slice::from_ref(&l));
    let t2 = f.build(&[l]);
    assert_eq!(f.cpio(&t1), f.cpio(&t2));
    let mut w = NewcWriter::new(Vec::new());
    let mut ino = 0;
    t1.write_newc("containers/web/rootfs", 0, &f.store, &mut w, &mut ino)
        .unwrap();
    let bytes = w.finish().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let order: Vec<usize> = [
        "containers\0",
        "containers/web\0",
        "containers/web/rootfs\0",
        "containers/web/rootfs/a\0",
        "containers/web/rootfs/b\0",
    ]
    .iter()
    .map(|n| text.find(n).unwrap_or_else(|| panic!("{n} missing")))
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "parents first, sorted"
    );
    assert_eq!(ino, 5);
}

/// pack → oci: layout → fetch into the store → tree: the stages fit together.
#[test]
fn tree_of_a_fetched_image() {
    let f = fx();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/app"), b"binary").unwrap();
    std::os::unix::fs::symlink("app", root.join("bin/alias")).unwrap();
    let opts = crate::pack::PackOptions {
        platform: crate::oci::Platform::linux_amd64(),
        epoch: 0,
        entrypoint: None,
        cmd: None,
        env: vec![],
    };
    crate::pack::pack(&root, &dir.path().join("layout"), "app", &opts).unwrap();
    let r: crate::reference::ImageRef = format!("oci:{}:app", dir.path().join("layout").display())
        .parse()
        .unwrap();
    let fetcher = crate::fetch::Fetcher::new(
        f.store.clone(),
        Default::default(),
        crate::fetch::no_events(),
        [&r],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let img = rt
        .block_on(fetcher.pull(&[(r.clone(), crate::oci::Platform::linux_amd64())]))
        .unwrap()
        .remove(0);
    let t = image_tree(
        &f.store,
        &img,
        ApplyOptions {
            clamp_mtime: Some(0),
        },
    )
    .unwrap();
    assert_eq!(paths(&t), ["bin", "bin/alias", "bin/app"]);
    let cpio = f.cpio(&t);
    assert!(
        cpio.windows(6).any(|w| w == b"binary"),
        "data read back from the store"
    );
}

/// PAX long names and GNU sparse files, as GNU tar writes them.
#[test]
fn pax_names_and_sparse_files_from_gnu_tar() {
    let f = fx();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let long = format!("{}/name", "p".repeat(120));
    std::fs::create_dir_all(src.join(&long).parent().unwrap()).unwrap();
    std::fs::write(src.join(&long), b"pax").unwrap();
    // A sparse file: 1 MiB hole, 5 bytes, another hole.
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(3 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_at(b"hello", 1 << 20).unwrap();
    drop(sparse);
    for (format, extra) in [("posix", "--sparse"), ("gnu", "--sparse")] {
        let tar = dir.path().join(format!("{format}.tar"));
        let st = std::process::Command::new("tar")
            .args([
                "-C",
                src.to_str().unwrap(),
                &format!("--format={format}"),
                extra,
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let bytes = std::fs::read(&tar).unwrap();
        if format == "posix" {
            let mut t = Tree::new();
            let e = f.apply(&mut t, &bytes).unwrap_err().to_string();
            assert!(e.contains("PAX sparse files"), "{e}");
            // Without --sparse, PAX long names work.
            let st = std::process::Command::new("tar")
                .args([
                    "-C",
                    src.to_str().unwrap(),
                    "--format=posix",
                    "-cf",
                    tar.to_str().unwrap(),
                    ".",
                ])
                .status()
                .unwrap();
            assert!(st.success());
            let t = f.build(&[std::fs::read(&tar).unwrap()]);
            assert!(t.get(&long).is_some(), "pax long name");
            assert_eq!(
                t.read_file(&f.store, "sparse", 16 << 20)
                    .unwrap()
                    .unwrap()
                    .len(),
                3 << 20
            );
            continue;
        }
        let t = f.build(&[bytes]);
        assert!(t.get(&long).is_some(), "{format}: long name");
        let data = t.read_file(&f.store, "sparse", 16 << 20).unwrap().unwrap();
        assert_eq!(data.len(), 3 << 20, "{format}: sparse size");
        assert_eq!(&data[1 << 20..(1 << 20) + 5], b"hello");
        assert!(data[..1 << 20].iter().all(|&b| b == 0));
    }
}
