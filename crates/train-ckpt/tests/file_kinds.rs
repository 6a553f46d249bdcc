//! A file's kind is told by its content, each kind by a structure no other shares; the name
//! only when the content matches none (issue #21: a safetensors header length of 0x80 mod 256
//! was taken for a pickle's PROTO, about one file in 32).

use std::path::Path;

use safetensors::tensor::TensorView;
use train_ckpt::write::serialize_views;
use train_ckpt::Meta;
use train_ckpt::{CheckpointFile, FileKind, Integrity};

mod common;

use common::tckpt;

/// The tensor every file here holds: `w`, F32 [4, 4], 0 to 15.
fn w_bytes() -> Vec<u8> {
    (0..16u32).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// A safetensors file holding `w` whose header is exactly `len` bytes (at least
/// [`shortest_header`]): the JSON, then spaces, or with `pad_metadata` a `__metadata__`
/// padding string when that is long enough to fill it.
fn with_header_of(len: usize, pad_metadata: bool) -> Vec<u8> {
    let tensor = r#""w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}"#;
    let padded = |pad: usize| format!(r#"{{"__metadata__":{{"pad":"{}"}},{tensor}}}"#, "x".repeat(pad));
    let json = match len.checked_sub(padded(0).len()) {
        Some(pad) if pad_metadata => padded(pad),
        _ => format!("{{{tensor}}}{}", " ".repeat(len - shortest_header())),
    };
    assert_eq!(json.len(), len);
    let mut file = (len as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.extend_from_slice(&w_bytes());
    file
}

fn shortest_header() -> usize {
    r#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#.len()
}

/// The file's header length, as its first 8 bytes say.
fn header_len(file: &[u8]) -> u64 {
    u64::from_le_bytes(file[..8].try_into().unwrap())
}

/// Writes `bytes` to a new `.safetensors` file in `dir` and checks that they read as
/// safetensors, every tensor verified, `w` intact; returns the integrity verify reports.
/// (A new file each time: rewriting one on ext4 waits for its blocks to reach the disk.)
fn opens_as_safetensors(dir: &Path, bytes: &[u8]) -> Integrity {
    let path = tempfile::Builder::new().suffix(".safetensors").tempfile_in(dir).unwrap();
    std::fs::write(path.path(), bytes).unwrap();
    let what = format!("header of {} bytes", header_len(bytes));
    let file = CheckpointFile::open(path.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(file.kind(), FileKind::Safetensors, "{what}");
    let v = file.verify().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(file.read("w").unwrap(), w_bytes(), "{what}");
    assert!(v.tensors >= 1, "{what}");
    v.integrity
}

/// Issue #21. Header lengths take every value mod 256, many times over (every length from
/// the shortest header on, for 2,304 bytes, padded with spaces and with metadata), among them
/// those whose first two bytes are a pickle's PROTO 2 to 5 (0x280, 0x380, ...); then files of
/// the safetensors crate's writer (headers padded to 8) and of ours (sealed metadata), over
/// 32 cycles of 256. Each opens as safetensors and verifies.
#[test]
fn header_length_0x80_mod_256_is_not_a_pickle() {
    // Thousands of small files: in memory where there is a RAM-backed folder.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let dir = dir.path();
    let mut residues = [0usize; 256];
    for len in shortest_header()..shortest_header() + 9 * 256 {
        for pad_metadata in [false, true] {
            let bytes = with_header_of(len, pad_metadata);
            assert_eq!(opens_as_safetensors(dir, &bytes), Integrity::NotChecked);
        }
        residues[len % 256] += 1;
    }
    assert!(residues.iter().all(|&n| n >= 9), "{residues:?}");
    for proto in 2..=5usize {
        assert!((shortest_header()..shortest_header() + 9 * 256).contains(&(proto << 8 | 0x80)));
    }

    // The safetensors crate's writer pads headers to 8: 32 residues, each several times.
    let w = w_bytes();
    let view = TensorView::new(safetensors::Dtype::F32, vec![4, 4], &w).unwrap();
    let mut seen_0x80 = 0;
    for pad in 0..32 * 256 / 8 {
        let metadata = std::collections::HashMap::from([("pad".to_string(), "x".repeat(pad))]);
        let bytes = safetensors::serialize([("w", &view)], Some(metadata)).unwrap();
        seen_0x80 += usize::from(bytes[0] == 0x80);
        assert_eq!(opens_as_safetensors(dir, &bytes), Integrity::NotChecked);
    }
    assert!(seen_0x80 >= 3, "{seen_0x80} headers of 0x80 mod 256");

    // Ours: a tensor name of every length moves the header through every residue of 8.
    let mut seen_0x80 = 0;
    for n in 1..=32 * 256 / 8 {
        let name = format!("{}.bias", "b".repeat(n));
        let views = [("w", &view), (name.as_str(), &view)];
        let bytes = serialize_views(dir, &views, &Meta::sample("adamw", false)).unwrap();
        seen_0x80 += usize::from(bytes[0] == 0x80);
        assert_eq!(opens_as_safetensors(dir, &bytes), Integrity::Checked);
    }
    assert!(seen_0x80 >= 3, "{seen_0x80} headers of 0x80 mod 256");
}

/// Issue #21's reproduction (`safetensors.torch.save_file` with a 38-byte metadata value: a
/// 128-byte header) verifies through the binary; a legacy pickle (`torch.save` with
/// `_use_new_zipfile_serialization=False`) and a zip still read as PyTorch, whatever their
/// names say; where the name and the content disagree, the content wins and the log says so.
#[test]
fn a_pickle_and_a_zip_still_open_as_pytorch_and_content_beats_the_name() {
    let dir = common::reference_files("make_file_kinds.py", "file_kinds");
    let d = dir.as_path();
    let out = tckpt(d, &["verify", "p.safetensors"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("readable, not checked"));
    assert_eq!(std::fs::read(d.join("p.safetensors")).unwrap()[0], 0x80);

    std::fs::copy(d.join("legacy.pt"), d.join("legacy.safetensors")).unwrap();
    std::fs::copy(d.join("zip.pt"), d.join("zip.tckpt")).unwrap();
    std::fs::copy(d.join("p.safetensors"), d.join("p.pt")).unwrap();
    for (name, kind) in [
        ("p.safetensors", FileKind::Safetensors),
        ("legacy.pt", FileKind::Pytorch),
        ("zip.pt", FileKind::Pytorch),
        ("legacy.safetensors", FileKind::Pytorch),
        ("zip.tckpt", FileKind::Pytorch),
        ("p.pt", FileKind::Safetensors),
    ] {
        let file = CheckpointFile::open(&d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(file.kind(), kind, "{name}");
        assert_eq!(file.read("w").unwrap(), w_bytes(), "{name}");
    }
    let out = tckpt(d, &["inspect", "legacy.safetensors"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("the name says safetensors but the content is a torch.save file (zip or pickle)")
            && log.contains("legacy.safetensors"),
        "{log}"
    );
    let out = tckpt(d, &["inspect", "p.safetensors"]);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Content that matches no kind is an error naming the file: the name's reader says what is
/// wrong, or, for a name of no kind, that the format is unknown. Content that matches two
/// kinds and parses as neither says why for each.
#[test]
fn content_of_no_kind_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("notes.txt"), "not a checkpoint").unwrap();
    let err = CheckpointFile::open(&d.join("notes.txt")).err().unwrap().to_string();
    assert!(err.contains("notes.txt") && err.contains("unknown checkpoint format"), "{err}");

    let mut huge = (u64::MAX / 2).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    std::fs::write(d.join("huge.safetensors"), huge).unwrap();
    let err = CheckpointFile::open(&d.join("huge.safetensors")).err().unwrap().to_string();
    assert!(err.contains("huge.safetensors") && err.contains("exceeds the 100000000-byte limit"), "{err}");

    // 0x280 bytes of header that are not JSON: safetensors and pickle by their first bytes.
    let mut both = 0x280u64.to_le_bytes().to_vec();
    both.push(b'{');
    both.resize(8 + 0x280 + 64, b'#');
    std::fs::write(d.join("both.bin"), &both).unwrap();
    let err = CheckpointFile::open(&d.join("both.bin")).err().unwrap().to_string();
    assert!(err.contains("both.bin") && err.contains("PyTorch file"), "{err}");
    assert!(err.contains("nor does it read as safetensors: header:"), "{err}");
}
