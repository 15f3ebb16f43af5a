//! Model sources: safetensors headers (synthetic files, valid and corrupt), the HF
//! cache layout, the preset → path → cache resolution order, and a property test that
//! config.json parsing never panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use llm_mem::arch::params;
use llm_mem::arch::LoraTargets;
use llm_mem::hf::config::parse_config;
use llm_mem::hf::{hub, presets, safetensors};
use llm_mem::units::dtype::DType;
use llm_mem::Error;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::util::{check_all, proptest_config, Checked, Counted, TempDir};

/// Write a safetensors file: header JSON as given, then `data_len` zero bytes.
fn write_raw(path: &Path, header: &[u8], data_len: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend(std::iter::repeat_n(0u8, data_len));
    fs::write(path, bytes).unwrap();
}

/// Write a consistent safetensors file for `(name, dtype, shape)` tensors.
fn write_st(path: &Path, tensors: &[(&str, &str, &[u64])]) {
    let size = |d: &str| match d {
        "F32" | "I32" => 4,
        "BF16" | "F16" => 2,
        _ => 1,
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, dtype, shape) in tensors {
        let n: u64 = shape.iter().product::<u64>() * size(dtype);
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    write_raw(
        path,
        serde_json::to_string(&header).unwrap().as_bytes(),
        off as usize,
    );
}

const TINY_LLAMA: &str = r#"{"model_type":"llama","hidden_size":8,"num_hidden_layers":2,
  "num_attention_heads":2,"num_key_value_heads":1,"intermediate_size":16,"vocab_size":32,
  "tie_word_embeddings":false}"#;

/// The tensors transformers would save for TINY_LLAMA (+ an inv_freq buffer).
fn tiny_llama_tensors() -> Vec<(String, &'static str, Vec<u64>)> {
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), "BF16", vec![32, 8]),
        ("lm_head.weight".to_string(), "BF16", vec![32, 8]),
        ("model.norm.weight".to_string(), "BF16", vec![8]),
    ];
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![8, 8]),
            ("self_attn.k_proj.weight", vec![4, 8]),
            ("self_attn.v_proj.weight", vec![4, 8]),
            ("self_attn.o_proj.weight", vec![8, 8]),
            ("mlp.gate_proj.weight", vec![16, 8]),
            ("mlp.up_proj.weight", vec![16, 8]),
            ("mlp.down_proj.weight", vec![8, 16]),
            ("input_layernorm.weight", vec![8]),
            ("post_attention_layernorm.weight", vec![8]),
        ] {
            v.push((format!("{p}.{n}"), "BF16", s));
        }
    }
    v.push((
        "model.layers.0.self_attn.rotary_emb.inv_freq".to_string(),
        "F32",
        vec![2],
    ));
    v
}

fn write_tiny_llama_ckpt(path: &Path) {
    let t = tiny_llama_tensors();
    let refs: Vec<(&str, &str, &[u64])> = t
        .iter()
        .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
        .collect();
    write_st(path, &refs);
}

fn st_message(e: Error) -> String {
    match e {
        Error::Safetensors { message, .. } => message,
        e => panic!("expected a safetensors error, got {e}"),
    }
}

#[test]
fn reads_a_valid_header() {
    let d = TempDir::new("valid");
    let p = d.path().join("model.safetensors");
    write_st(
        &p,
        &[
            ("a", "F32", &[2, 3]),
            ("b", "BF16", &[4]),
            ("c", "BOOL", &[]),
        ],
    );
    let t = safetensors::read_header(&p).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(
        (t[0].name.as_str(), t[0].dtype, t[0].shape.clone()),
        ("a", DType::F32, vec![2, 3])
    );
    assert_eq!(t[1].dtype, DType::BF16);
    assert_eq!(t[2].numel(), 1);
}

#[test]
fn corrupt_headers_are_errors() {
    let d = TempDir::new("corrupt");
    let p = d.path().join("x.safetensors");

    fs::write(&p, [1u8, 2, 3]).unwrap();
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("shorter"));

    // Header length beyond the file.
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    fs::write(&p, b).unwrap();
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("past the end"));

    // Header length above the 100 MB limit.
    fs::write(&p, (200_000_000u64).to_le_bytes()).unwrap();
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("limit"));

    write_raw(&p, b"{not json", 0);
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("JSON"));

    write_raw(&p, b"[1,2]", 0);
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("object"));

    // Offsets that do not match shape x dtype.
    write_raw(
        &p,
        br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#,
        16,
    );
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("do not match"));

    // Offsets past the data section (file truncated).
    write_raw(
        &p,
        br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
        4,
    );
    assert!(st_message(safetensors::read_header(&p).unwrap_err()).contains("past the data"));

    write_raw(
        &p,
        br#"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}}"#,
        1,
    );
    let m = st_message(safetensors::read_header(&p).unwrap_err());
    assert!(m.contains("Q4") && m.contains("BF16"), "{m}");

    write_raw(&p, br#"{"w":{"dtype":"F32","shape":[-1]}}"#, 0);
    assert!(safetensors::read_header(&p).is_err());

    // Missing file.
    assert!(matches!(
        safetensors::read_header(&d.path().join("nope")).unwrap_err(),
        Error::Io { .. }
    ));
}

#[test]
fn sharded_index() {
    let d = TempDir::new("index");
    write_st(
        &d.path().join("model-00001-of-00002.safetensors"),
        &[("a", "F16", &[4, 4])],
    );
    write_st(
        &d.path().join("model-00002-of-00002.safetensors"),
        &[("b", "F16", &[4]), ("c", "F16", &[2])],
    );
    let index = d.path().join("model.safetensors.index.json");
    fs::write(
        &index,
        json!({"metadata": {"total_size": 44}, "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}})
        .to_string(),
    )
    .unwrap();
    let t = safetensors::read_index(&index).unwrap();
    assert_eq!(
        t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );

    // A tensor the shard does not hold.
    fs::write(
        &index,
        json!({"weight_map": {"z": "model-00001-of-00002.safetensors"}}).to_string(),
    )
    .unwrap();
    assert!(st_message(safetensors::read_index(&index).unwrap_err()).contains("\"z\""));

    // Paths outside the folder are refused.
    fs::write(
        &index,
        json!({"weight_map": {"a": "../x.safetensors"}}).to_string(),
    )
    .unwrap();
    assert!(safetensors::read_index(&index).is_err());

    fs::write(&index, "{}").unwrap();
    assert!(st_message(safetensors::read_index(&index).unwrap_err()).contains("weight_map"));
}

#[test]
fn checkpoint_counts_equal_architecture_counts() {
    let d = TempDir::new("ckpt");
    fs::write(d.path().join("config.json"), TINY_LLAMA).unwrap();
    write_tiny_llama_ckpt(&d.path().join("model.safetensors"));
    let spec = hub::resolve_with(d.path().to_str().unwrap(), None).unwrap();
    let tensors = spec.checkpoint.as_ref().expect("checkpoint read");
    assert_eq!(tensors.len(), 22);
    assert_eq!(spec.torch_dtype, Some(DType::BF16));
    let from_ckpt = params::count(&spec);
    let from_arch = params::count_architecture(&spec);
    assert_eq!(from_ckpt, from_arch);
    assert_eq!(
        from_arch.total,
        2 * 32 * 8 + 8 + 2 * (8 * 8 * 2 + 4 * 8 * 2 + 3 * 16 * 8 + 16)
    );
}

/// A fake HF cache holding `org/name` with two snapshots.
fn fake_cache(root: &Path, id: &str, main_rev: Option<&str>) -> PathBuf {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    for rev in ["aaaa", "bbbb"] {
        let s = repo.join("snapshots").join(rev);
        fs::create_dir_all(&s).unwrap();
        let hidden = if rev == "aaaa" { 8 } else { 16 };
        fs::write(
            s.join("config.json"),
            TINY_LLAMA.replace("\"hidden_size\":8", &format!("\"hidden_size\":{hidden}")),
        )
        .unwrap();
    }
    if let Some(rev) = main_rev {
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), rev).unwrap();
    }
    repo
}

#[test]
fn hf_cache_layout() {
    let d = TempDir::new("cache");
    let repo = fake_cache(d.path(), "acme/tiny", Some("aaaa"));
    let spec = hub::resolve_with("acme/tiny", Some(d.path())).unwrap();
    assert_eq!((spec.name.as_str(), spec.hidden), ("acme/tiny", 8));
    assert!(spec.checkpoint.is_none());

    // refs/main names bbbb.
    fs::write(repo.join("refs/main"), "bbbb\n").unwrap();
    assert_eq!(
        hub::resolve_with("acme/tiny", Some(d.path()))
            .unwrap()
            .hidden,
        16
    );

    // Checkpoint in the snapshot.
    write_tiny_llama_ckpt(&repo.join("snapshots/aaaa/model.safetensors"));
    fs::write(repo.join("refs/main"), "aaaa").unwrap();
    let spec = hub::resolve_with("acme/tiny", Some(d.path())).unwrap();
    assert_eq!(spec.checkpoint.unwrap().len(), 22);
}

#[test]
fn hf_cache_without_refs_takes_a_snapshot() {
    let d = TempDir::new("norefs");
    fake_cache(d.path(), "acme/tiny", None);
    let spec = hub::resolve_with("acme/tiny", Some(d.path())).unwrap();
    assert!(spec.hidden == 8 || spec.hidden == 16);
}

#[test]
fn not_found_names_the_cache() {
    let d = TempDir::new("empty");
    match hub::resolve_with("acme/missing", Some(d.path())).unwrap_err() {
        Error::ModelNotFound { name, cache, .. } => {
            assert_eq!(name, "acme/missing");
            assert_eq!(cache, d.path().display().to_string());
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        hub::resolve_with("no-such-model-anywhere", None).unwrap_err(),
        Error::ModelNotFound { .. }
    ));
}

#[test]
fn resolution_order_preset_then_path_then_cache() {
    // A preset wins over the cache.
    let d = TempDir::new("order");
    let spec = hub::resolve_with("LLAMA-2-7B", Some(d.path())).unwrap();
    assert_eq!((spec.name.as_str(), spec.hidden), ("llama-2-7b", 4096));

    // A config.json file and its folder.
    let m = d.path().join("mymodel");
    fs::create_dir_all(&m).unwrap();
    fs::write(m.join("config.json"), TINY_LLAMA).unwrap();
    assert_eq!(
        hub::resolve_with(m.join("config.json").to_str().unwrap(), None)
            .unwrap()
            .hidden,
        8
    );
    assert_eq!(
        hub::resolve_with(m.to_str().unwrap(), None).unwrap().hidden,
        8
    );

    // A folder without config.json.
    let empty = d.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        hub::resolve_with(empty.to_str().unwrap(), None).unwrap_err(),
        Error::Config { .. }
    ));

    // A bad config.json names the file.
    fs::write(m.join("config.json"), "{").unwrap();
    let e = hub::resolve_with(m.to_str().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn hub_ids() {
    assert!(hub::is_hub_id("meta-llama/Llama-2-7b-hf"));
    for s in ["gpt2", "a/b/c", "/x", "a/", "../x", "a/.."] {
        assert!(!hub::is_hub_id(s), "{s}");
    }
}

// ---------- property tests: config parsing never panics ----------

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(2),
            Just(3),
            Just(64),
            Just(1 << 20),
            Just(1 << 40),
            Just(i64::MAX)
        ]
        .prop_map(|n| json!(n)),
        "[a-z_0-9]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parse, and when it succeeds, run everything downstream that does arithmetic.
/// Whether it parsed.
fn exercise(json: &str) -> bool {
    match parse_config(json, "prop") {
        Ok(spec) => {
            spec.validate().unwrap();
            let c = params::count(&spec);
            assert!(c.total > 0);
            params::lora(&spec, 64, &LoraTargets::AllLinear);
            params::linear_weight_params(&spec);
            true
        }
        Err(_) => false,
    }
}

/// New cases per property (each also replays the seed of
/// `sources.proptest-regressions` first).
const CASES: u32 = 256;

/// The replayed seed and every new case reached the assertion.
fn all_checked(c: Counted) {
    assert_eq!(c.new, CASES as usize);
    assert!(
        c.replayed >= 1,
        "the seed in sources.proptest-regressions is replayed"
    );
}

const MODEL_TYPES: [&str; 17] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
    "gpt_neox",
    "falcon",
    "stablelm",
    "bloom",
    "gpt_bigcode",
    "phi",
    "qwen",
    "mixtral",
    "t5",
];

/// Any JSON value, and (so that this half runs on every case, not only when the value
/// happens to be an object) a random object with a known or unknown `model_type`.
#[test]
fn random_json_never_panics() {
    let strategy = (
        arb_json(),
        prop::collection::btree_map("[a-z_]{1,10}", arb_json(), 0..8),
        prop::sample::select(MODEL_TYPES.to_vec()),
    );
    let c = check_all(
        "random_json_never_panics",
        proptest_config(CASES, file!()),
        strategy,
        |(v, mut m, mt), checked: &Checked| {
            exercise(&v.to_string());
            m.insert("model_type".to_string(), json!(mt));
            exercise(&Value::Object(m.into_iter().collect()).to_string());
            checked.hit();
            Ok(())
        },
    );
    all_checked(c);
}

#[test]
fn mutated_presets_never_panic() {
    let parsed = AtomicUsize::new(0);
    let strategy = (
        any::<prop::sample::Index>(),
        prop::collection::vec(
            (any::<prop::sample::Index>(), prop::option::of(arb_json())),
            1..5,
        ),
    );
    let c = check_all(
        "mutated_presets_never_panic",
        proptest_config(CASES, file!()),
        strategy,
        |(idx, edits), checked: &Checked| {
            let names = presets::names();
            let name = names[idx.index(names.len())];
            let mut v: Value = serde_json::from_str(presets::raw(name).unwrap()).unwrap();
            let m = v.as_object_mut().unwrap();
            for (k, new) in edits {
                let keys: Vec<String> = m.keys().cloned().collect();
                let key = keys[k.index(keys.len())].clone();
                match new {
                    None => {
                        m.remove(&key);
                    }
                    Some(x) => {
                        m.insert(key, x);
                    }
                }
            }
            if exercise(&v.to_string()) {
                parsed.fetch_add(1, Ordering::Relaxed);
            }
            checked.hit();
            Ok(())
        },
    );
    all_checked(c);
    // the arithmetic downstream of the parser ran on some of the mutated presets
    let parsed = parsed.into_inner();
    eprintln!(
        "mutated_presets_never_panic: {parsed} of {} parsed",
        c.new + c.replayed
    );
    assert!(
        parsed > 0,
        "no mutated preset parsed: the downstream checks never ran"
    );
}

#[test]
fn truncated_text_never_panics() {
    let strategy = (any::<prop::sample::Index>(), any::<prop::sample::Index>());
    let c = check_all(
        "truncated_text_never_panics",
        proptest_config(CASES, file!()),
        strategy,
        |(idx, cut), checked: &Checked| {
            let names = presets::names();
            let text = presets::raw(names[idx.index(names.len())]).unwrap();
            // the nearest character boundary at or before the cut (the files are ASCII
            // today, so this is the cut itself)
            let mut end = cut.index(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let cut = &text[..end];
            // Cutting only trailing whitespace leaves a complete object.
            if cut.trim_end().ends_with('}') {
                exercise(cut);
            } else {
                prop_assert!(parse_config(cut, "cut").is_err());
            }
            checked.hit();
            Ok(())
        },
    );
    all_checked(c);
}

#[test]
fn known_moe_and_vlm_names_say_why_they_are_rejected() {
    for name in ["llama-3.2-11b-vision", "minicpm-llama3-v-2_5"] {
        let e = llm_mem::hf::hub::resolve_with(name, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not supported yet") && e.contains(name),
            "{name}: {e}"
        );
    }
    let e = llm_mem::hf::hub::resolve_with("no-such-model", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
}

/// L15: a checkpoint without an output head whose config says untied is counted as
/// stored (tied), and the resolution says so instead of silently.
#[test]
fn l15_untied_config_with_a_headless_checkpoint_is_noted() {
    let d = TempDir::new("l15-head");
    let snap = d.path().join("models--o--headless/snapshots/0000");
    fs::create_dir_all(&snap).unwrap();
    fs::write(snap.join("config.json"), TINY_LLAMA).unwrap();
    let t: Vec<_> = tiny_llama_tensors()
        .into_iter()
        .filter(|(n, _, _)| n != "lm_head.weight")
        .collect();
    let refs: Vec<(&str, &str, &[u64])> = t
        .iter()
        .map(|(n, dt, s)| (n.as_str(), *dt, s.as_slice()))
        .collect();
    write_st(&snap.join("model.safetensors"), &refs);
    let (spec, notes) = hub::resolve_noted("o/headless", Some(d.path())).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("tie_word_embeddings false") && n.contains("lm_head.weight")),
        "{notes:?}"
    );
    assert_eq!(params::count(&spec).lm_head, 0, "counted as stored");
    // with the head stored there is no such note
    write_tiny_llama_ckpt(&snap.join("model.safetensors"));
    let (_, notes) = hub::resolve_noted("o/headless", Some(d.path())).unwrap();
    assert!(notes.iter().all(|n| !n.contains("lm_head")), "{notes:?}");
}
