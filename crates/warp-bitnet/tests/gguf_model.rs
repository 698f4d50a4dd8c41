//! A GGUF model through the engine: the same tiny model as a Hugging Face folder and as a
//! bitnet.cpp GGUF file (I2_S bytes written from the format description) gives the same logits,
//! bit for bit, and the same greedy tokens; the tokenizer comes from the metadata.

mod common;

use warp_bitnet::engine::{generate, Engine, EngineOptions, Sampler, SamplingParams};

#[test]
fn gguf_and_folder_load_the_same_model() {
    let dir = common::temp_dir("gguf-model");
    common::write_checkpoint(&dir, 2, 5);
    let gguf = dir.join("model.gguf");
    std::fs::write(&gguf, common::gguf_model(2, 5)).unwrap();
    let opts = EngineOptions {
        max_context: 32,
        ..Default::default()
    };
    let mut folder = Engine::load(&dir, &opts).unwrap();
    let mut file = Engine::load(&gguf, &opts).unwrap();
    assert_eq!(folder.config().vocab_size, file.config().vocab_size);
    assert_eq!(
        warp_bitnet::engine::model_config(&gguf).unwrap(),
        *file.config()
    );
    let v = common::VOCAB;
    for prompt in [&[3u32][..], &[5, 9, 33, 4, 20, 7, 7]] {
        let (mut a, mut b) = (vec![0f32; v], vec![0f32; v]);
        folder.forward(&[(0, prompt)], &mut a).unwrap();
        file.forward(&[(0, prompt)], &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().any(|&x| x != 0.0));
        folder.reset_slot(0);
        file.reset_slot(0);
    }
    let run = |e: &mut Engine| {
        let mut sampler = Sampler::new(&SamplingParams::default()).unwrap();
        let mut out = Vec::new();
        generate(e, &[3, 8, 1], 20, &mut sampler, false, |t| {
            out.push(t);
            true
        })
        .unwrap();
        out
    };
    assert_eq!(run(&mut folder), run(&mut file));
    let tok = file.tokenizer().expect("the GGUF file's tokenizer");
    assert_eq!(tok.encode("ab a", false).unwrap(), [0, 1, 27]);
    assert_eq!(tok.decode(&[0, 1, 27], false).unwrap(), "ab a");
    let _ = std::fs::remove_dir_all(&dir);
}
