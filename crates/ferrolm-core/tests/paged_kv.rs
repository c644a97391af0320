//! The paged KV cache under the model: forked sequences share pages until
//! one writes (copy-on-write), prefix pages are found by content, and
//! logits read through any block table equal a fresh computation.

use std::path::PathBuf;

use ferrolm_core::backend::cpu::Cpu;
use ferrolm_core::{KvLayout, Logits, SeqInput, Transformer};

fn model() -> Transformer<Cpu> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen3_f32");
    Transformer::from_pretrained(dir, Some(128)).unwrap()
}

fn fresh_logits(model: &Transformer<Cpu>, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(1).unwrap();
    model.forward(&mut cache, &[SeqInput { seq: 0, start_pos: 0, tokens }], Logits::Last).unwrap()
}

#[test]
fn forked_sequences_copy_the_shared_last_page_on_write() {
    let model = model();
    let mut cache = model.new_paged_cache(KvLayout { page_size: 4, num_pages: 16 }, false).unwrap();
    let parent = cache.add_sequence();
    let prompt = [3, 1, 4, 1, 5, 9]; // one full page and half of another
    model
        .forward(&mut cache, &[SeqInput { seq: parent, start_pos: 0, tokens: &prompt }], Logits::Last)
        .unwrap();
    let child = cache.fork(parent).unwrap();
    assert_eq!(cache.pages(child), cache.pages(parent));
    assert_eq!(cache.stats().used_pages, 2);

    // Both continue differently in one batch: the half page is copied once.
    let batch = [
        SeqInput { seq: parent, start_pos: 6, tokens: &[2] },
        SeqInput { seq: child, start_pos: 6, tokens: &[7] },
    ];
    let logits = model.forward(&mut cache, &batch, Logits::Last).unwrap();
    assert_eq!(cache.pages(child)[0], cache.pages(parent)[0], "the full page stays shared");
    assert_ne!(cache.pages(child)[1], cache.pages(parent)[1], "the written page was copied");
    assert_eq!(cache.stats().used_pages, 3);

    let vocab = model.config.vocab_size;
    let expect_parent = fresh_logits(&model, &[3, 1, 4, 1, 5, 9, 2]);
    let expect_child = fresh_logits(&model, &[3, 1, 4, 1, 5, 9, 7]);
    for (got, want) in [(&logits[..vocab], &expect_parent), (&logits[vocab..], &expect_child)] {
        let err = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-5, "max abs error {err}");
    }

    cache.remove_sequence(parent).unwrap();
    cache.remove_sequence(child).unwrap();
    assert_eq!(cache.stats().used_pages, 0);
}

#[test]
fn prefix_pages_are_shared_by_content_and_rewriting_one_copies_it() {
    let model = model();
    let mut cache = model.new_paged_cache(KvLayout { page_size: 4, num_pages: 8 }, true).unwrap();
    let tokens: Vec<u32> = (1..=10).collect();
    let a = cache.add_sequence();
    model.forward(&mut cache, &[SeqInput { seq: a, start_pos: 0, tokens: &tokens }], Logits::Last).unwrap();
    cache.remove_sequence(a).unwrap();
    let stats = cache.stats();
    assert_eq!((stats.used_pages, stats.cached_pages), (0, 2), "two full pages stay cached");

    // Same first 9 tokens: both full pages come back; a different 5th token: none do.
    let (b, cached) = cache.add_sequence_with_prefix(&tokens[..9]);
    assert_eq!(cached, 8);
    let mut other = tokens.clone();
    other[4] = 99;
    let (c, cached_c) = cache.add_sequence_with_prefix(&other);
    assert_eq!(cached_c, 4, "only the first page matches");

    // Rewriting position 6 of b (inside a shared, registered page) copies it.
    let shared = cache.pages(b)[1];
    let logits =
        model.forward(&mut cache, &[SeqInput { seq: b, start_pos: 6, tokens: &[42] }], Logits::Last).unwrap();
    assert_ne!(cache.pages(b)[1], shared);
    let err = logits
        .iter()
        .zip(fresh_logits(&model, &[1, 2, 3, 4, 5, 6, 42]))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-5, "max abs error {err}");
    cache.remove_sequence(b).unwrap();
    cache.remove_sequence(c).unwrap();
    assert_eq!(cache.stats().used_pages, 0);
}

#[test]
fn a_full_pool_is_an_error_that_changes_nothing() {
    let model = model();
    let mut cache = model.new_paged_cache(KvLayout { page_size: 4, num_pages: 2 }, false).unwrap();
    let s = cache.add_sequence();
    let tokens: Vec<u32> = (1..=8).collect();
    model.forward(&mut cache, &[SeqInput { seq: s, start_pos: 0, tokens: &tokens }], Logits::Last).unwrap();
    let err = model.forward(&mut cache, &[SeqInput { seq: s, start_pos: 8, tokens: &[1] }], Logits::Last);
    assert!(matches!(err, Err(ferrolm_core::Error::KvCacheFull { needed: 1, available: 0 })));
    assert_eq!(cache.len(s), 8);
}

#[test]
fn rewriting_a_sequence_from_the_start_reuses_its_own_pages() {
    let model = model();
    let mut cache = model.new_paged_cache(KvLayout { page_size: 4, num_pages: 3 }, false).unwrap();
    let s = cache.add_sequence();
    let tokens: Vec<u32> = (1..=12).collect();
    model.forward(&mut cache, &[SeqInput { seq: s, start_pos: 0, tokens: &tokens }], Logits::Last).unwrap();
    assert_eq!(cache.available_pages(), 0);
    // The pool is full of this sequence; starting over from 0 must still fit.
    let again =
        model.forward(&mut cache, &[SeqInput { seq: s, start_pos: 0, tokens: &tokens }], Logits::Last);
    assert_eq!(again.unwrap(), fresh_logits(&model, &tokens));
}

#[test]
fn picking_tokens_where_the_logits_are_matches_the_host_reference() {
    use ferrolm_core::backend::sample::{sample_row, RowSampling};

    let model = model();
    let tokens: Vec<u32> = (1..=9).collect();
    let logits = fresh_logits(&model, &tokens);
    for p in [
        RowSampling { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.0 },
        RowSampling { temperature: 0.8, top_k: 20, top_p: 0.9, min_p: 0.05, uniform: 0.37 },
        RowSampling { temperature: 1.3, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.91 },
    ] {
        let mut cache = model.new_cache(1).unwrap();
        let picked = model.forward_sampled(
            &mut cache,
            &[SeqInput { seq: 0, start_pos: 0, tokens: &tokens }],
            Logits::Last,
            &[p],
        );
        assert_eq!(picked.unwrap(), vec![sample_row(&logits, &p)]);
    }
    let (greedy, _) = sample_row(
        &logits,
        &RowSampling { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.0 },
    );
    assert_eq!(greedy, ferrolm_core::sampling::argmax(&logits));
}
