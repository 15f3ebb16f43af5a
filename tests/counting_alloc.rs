//! The counting allocator, alone in its own test binary: no other test (and no candle
//! worker thread) allocates or frees while it measures, so the count is exact.

use llm_mem::probe::meter::{CountingAlloc, CountingMeter, MemoryMeter};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

#[test]
fn counting_allocator_is_exact_on_known_allocations() {
    let mut m = CountingMeter::new(None);
    let base = m.baseline().unwrap();
    m.start().unwrap();
    // black_box: the optimizer may elide an allocation that is never used
    let a: Vec<u8> = std::hint::black_box(Vec::with_capacity(1 << 20));
    let b: Vec<u64> = std::hint::black_box(Vec::with_capacity(1000));
    drop(std::hint::black_box(a));
    let c: Vec<u32> = std::hint::black_box(Vec::with_capacity(10));
    let r = m.stop().unwrap();
    // exact, up to what the test harness's own threads allocate or free meanwhile (a
    // few hundred bytes of result reporting at most)
    let (peak, cur) = (r.peak as i64 - base as i64, r.current as i64 - base as i64);
    assert!((peak - ((1 << 20) + 8000)).abs() < 4096, "{peak}");
    assert!((cur - 8040).abs() < 4096, "{cur}");
    drop((b, c));
}
