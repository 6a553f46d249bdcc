//! Verifying some tensors of a checkpoint: what a loader that reads only the weights checks
//! before it touches a model (the Python package's `load_model_only`).

use safetensors::tensor::TensorView;
use train_ckpt::write::write_checkpoint;
use train_ckpt::{CheckpointFile, Error, Integrity, Meta};

/// Writes `w` (F32 [256]) and its optimizer state, plain or compressed, and returns the path.
fn written(dir: &std::path::Path, compressed: bool) -> std::path::PathBuf {
    let w: Vec<u8> = (0..256u32).flat_map(|i| (i as f32).sin().to_le_bytes()).collect();
    let m: Vec<u8> = (0..256u32).flat_map(|i| (i as f32).cos().to_le_bytes()).collect();
    let views = [
        ("w", TensorView::new(safetensors::Dtype::F32, vec![256], &w).unwrap()),
        ("optimizer/w/exp_avg", TensorView::new(safetensors::Dtype::F32, vec![256], &m).unwrap()),
    ];
    let views: Vec<(&str, &TensorView)> = views.iter().map(|(n, v)| (*n, v)).collect();
    let path = dir.join(if compressed { "c.tckpt" } else { "p.safetensors" });
    write_checkpoint(&path, &views, Meta::sample("adamw", true).to_map(), compressed).unwrap();
    path
}

#[test]
fn verifying_the_weights_skips_damage_in_tensors_not_asked_for_and_finds_it_in_those_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path(), false);
    // Damage a byte of `optimizer/w/exp_avg`, found through the safetensors header.
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = header["optimizer/w/exp_avg"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[8 + header_len + start + 5] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let file = CheckpointFile::open(&path).unwrap();
    let weights = file.verify_tensors(&["w"]).unwrap();
    assert_eq!((weights.tensors, weights.integrity), (1, Integrity::Checked));
    let err = file.verify_tensors(&["w", "optimizer/w/exp_avg"]).unwrap_err().to_string();
    assert!(err.contains("optimizer/w/exp_avg"), "{err}");
    assert!(file.verify().is_err());
}

#[test]
fn verifying_names_the_file_lacks_is_an_error_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    for compressed in [false, true] {
        let file = CheckpointFile::open(&written(dir.path(), compressed)).unwrap();
        assert_eq!(file.verify_tensors(&["w", "optimizer/w/exp_avg"]).unwrap().tensors, 2);
        assert_eq!(file.verify_tensors(&[]).unwrap().tensors, 0);
        let err = file.verify_tensors(&["w", "nope"]).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }) && err.to_string().contains("`nope`"), "{err}");
    }
}
