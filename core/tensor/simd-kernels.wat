;; WebAssembly SIMD kernels for core/tensor/accumulator.ts (the aggregation hot loop).
;;
;; Build: `npx tsc -p . && node dist/scripts/build-wasm.js` compiles this file with wabt (simd feature) into
;; core/tensor/simd-kernels.wasm.ts. Edit this file, never the generated one.
;;
;; Memory is imported so each Accumulator owns (and the GC can free) its own linear memory. All pointers are byte
;; offsets into it, `n` is an element count. The caller keeps every region inside memory and below 4 GiB - 64 KiB,
;; so `ptr + n * size` never wraps. Regions start 64-byte aligned (not required for correctness: wasm v128
;; loads may be unaligned); chunk offsets passed by the caller keep 16-byte alignment. Each kernel runs an
;; unrolled v128 loop over the largest prefix that is a multiple of its unroll width (16 values for the float32
;; kernels, 8 for those touching float64), then a scalar loop over the remaining tail.
;;
;; Storage used by the accumulator:
;;   block: float32[n]  weighted sum of the latest <= BLOCK_UPDATES (32) updates (the cheap streaming part)
;;   main:  float64[n]  sum of flushed blocks (keeps the error independent of the number of updates)
(module
  (import "env" "memory" (memory 1))

  ;; dst[i] = src[i] * w                                                (first update of a block)
  (func (export "scale_f32") (param $dst i32) (param $src i32) (param $n i32) (param $w f32)
    (local $wv v128) (local $vend i32) (local $end i32)
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $vend (i32.add (local.get $dst) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $dst) (local.get $vend)))
        (v128.store offset=0 (local.get $dst) (f32x4.mul (v128.load offset=0 (local.get $src)) (local.get $wv)))
        (v128.store offset=16 (local.get $dst) (f32x4.mul (v128.load offset=16 (local.get $src)) (local.get $wv)))
        (v128.store offset=32 (local.get $dst) (f32x4.mul (v128.load offset=32 (local.get $src)) (local.get $wv)))
        (v128.store offset=48 (local.get $dst) (f32x4.mul (v128.load offset=48 (local.get $src)) (local.get $wv)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 64)))
        (local.set $src (i32.add (local.get $src) (i32.const 64)))
        (br $vloop)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
        (f32.store (local.get $dst) (f32.mul (f32.load (local.get $src)) (local.get $w)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (local.set $src (i32.add (local.get $src) (i32.const 4)))
        (br $tail))))

  ;; acc[i] += x[i] * w                                                 (every further update of a block)
  (func (export "axpy_f32") (param $acc i32) (param $x i32) (param $n i32) (param $w f32)
    (local $wv v128) (local $vend i32) (local $end i32)
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $vend (i32.add (local.get $acc) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (local.set $end (i32.add (local.get $acc) (i32.shl (local.get $n) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $acc) (local.get $vend)))
        (v128.store offset=0 (local.get $acc)
          (f32x4.add (v128.load offset=0 (local.get $acc))
            (f32x4.mul (v128.load offset=0 (local.get $x)) (local.get $wv))))
        (v128.store offset=16 (local.get $acc)
          (f32x4.add (v128.load offset=16 (local.get $acc))
            (f32x4.mul (v128.load offset=16 (local.get $x)) (local.get $wv))))
        (v128.store offset=32 (local.get $acc)
          (f32x4.add (v128.load offset=32 (local.get $acc))
            (f32x4.mul (v128.load offset=32 (local.get $x)) (local.get $wv))))
        (v128.store offset=48 (local.get $acc)
          (f32x4.add (v128.load offset=48 (local.get $acc))
            (f32x4.mul (v128.load offset=48 (local.get $x)) (local.get $wv))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 64)))
        (local.set $x (i32.add (local.get $x) (i32.const 64)))
        (br $vloop)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $acc) (local.get $end)))
        (f32.store (local.get $acc)
          (f32.add (f32.load (local.get $acc)) (f32.mul (f32.load (local.get $x)) (local.get $w))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 4)))
        (local.set $x (i32.add (local.get $x) (i32.const 4)))
        (br $tail))))

  ;; main[i] = f64(block[i]); block[i] = x[i] * w          (block full, main still empty: flush + start new block)
  (func (export "widen_scale") (param $main i32) (param $block i32) (param $x i32) (param $n i32) (param $w f32)
    (local $wv v128) (local $vend i32) (local $end i32) (local $b v128) (local $bh v128)
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $vend (i32.add (local.get $block) (i32.shl (i32.and (local.get $n) (i32.const -8)) (i32.const 2))))
    (local.set $end (i32.add (local.get $block) (i32.shl (local.get $n) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $block) (local.get $vend)))
        (local.set $b (v128.load offset=0 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=0 (local.get $main) (f64x2.promote_low_f32x4 (local.get $b)))
        (v128.store offset=16 (local.get $main) (f64x2.promote_low_f32x4 (local.get $bh)))
        (v128.store offset=0 (local.get $block) (f32x4.mul (v128.load offset=0 (local.get $x)) (local.get $wv)))
        (local.set $b (v128.load offset=16 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=32 (local.get $main) (f64x2.promote_low_f32x4 (local.get $b)))
        (v128.store offset=48 (local.get $main) (f64x2.promote_low_f32x4 (local.get $bh)))
        (v128.store offset=16 (local.get $block) (f32x4.mul (v128.load offset=16 (local.get $x)) (local.get $wv)))
        (local.set $main (i32.add (local.get $main) (i32.const 64)))
        (local.set $block (i32.add (local.get $block) (i32.const 32)))
        (local.set $x (i32.add (local.get $x) (i32.const 32)))
        (br $vloop)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $block) (local.get $end)))
        (f64.store (local.get $main) (f64.promote_f32 (f32.load (local.get $block))))
        (f32.store (local.get $block) (f32.mul (f32.load (local.get $x)) (local.get $w)))
        (local.set $main (i32.add (local.get $main) (i32.const 8)))
        (local.set $block (i32.add (local.get $block) (i32.const 4)))
        (local.set $x (i32.add (local.get $x) (i32.const 4)))
        (br $tail))))

  ;; main[i] += f64(block[i]); block[i] = x[i] * w                     (block full: flush + start new block)
  (func (export "flush_scale") (param $main i32) (param $block i32) (param $x i32) (param $n i32) (param $w f32)
    (local $wv v128) (local $vend i32) (local $end i32) (local $b v128) (local $bh v128)
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $vend (i32.add (local.get $block) (i32.shl (i32.and (local.get $n) (i32.const -8)) (i32.const 2))))
    (local.set $end (i32.add (local.get $block) (i32.shl (local.get $n) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $block) (local.get $vend)))
        (local.set $b (v128.load offset=0 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=0 (local.get $main)
          (f64x2.add (v128.load offset=0 (local.get $main)) (f64x2.promote_low_f32x4 (local.get $b))))
        (v128.store offset=16 (local.get $main)
          (f64x2.add (v128.load offset=16 (local.get $main))
            (f64x2.promote_low_f32x4 (local.get $bh))))
        (v128.store offset=0 (local.get $block) (f32x4.mul (v128.load offset=0 (local.get $x)) (local.get $wv)))
        (local.set $b (v128.load offset=16 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=32 (local.get $main)
          (f64x2.add (v128.load offset=32 (local.get $main)) (f64x2.promote_low_f32x4 (local.get $b))))
        (v128.store offset=48 (local.get $main)
          (f64x2.add (v128.load offset=48 (local.get $main))
            (f64x2.promote_low_f32x4 (local.get $bh))))
        (v128.store offset=16 (local.get $block) (f32x4.mul (v128.load offset=16 (local.get $x)) (local.get $wv)))
        (local.set $main (i32.add (local.get $main) (i32.const 64)))
        (local.set $block (i32.add (local.get $block) (i32.const 32)))
        (local.set $x (i32.add (local.get $x) (i32.const 32)))
        (br $vloop)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $block) (local.get $end)))
        (f64.store (local.get $main)
          (f64.add (f64.load (local.get $main)) (f64.promote_f32 (f32.load (local.get $block)))))
        (f32.store (local.get $block) (f32.mul (f32.load (local.get $x)) (local.get $w)))
        (local.set $main (i32.add (local.get $main) (i32.const 8)))
        (local.set $block (i32.add (local.get $block) (i32.const 4)))
        (local.set $x (i32.add (local.get $x) (i32.const 4)))
        (br $tail))))

  ;; out[i] = f32(f64(block[i]) * inv)                                  (mean, nothing flushed yet)
  (func (export "mean_block") (param $out i32) (param $block i32) (param $n i32) (param $inv f64)
    (local $iv v128) (local $vend i32) (local $end i32) (local $b v128) (local $bh v128)
    (local.set $iv (f64x2.splat (local.get $inv)))
    (local.set $vend (i32.add (local.get $out) (i32.shl (i32.and (local.get $n) (i32.const -8)) (i32.const 2))))
    (local.set $end (i32.add (local.get $out) (i32.shl (local.get $n) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $out) (local.get $vend)))
        (local.set $b (v128.load offset=0 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=0 (local.get $out)
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
            (f32x4.demote_f64x2_zero (f64x2.mul (f64x2.promote_low_f32x4 (local.get $b)) (local.get $iv)))
            (f32x4.demote_f64x2_zero
              (f64x2.mul (f64x2.promote_low_f32x4 (local.get $bh)) (local.get $iv)))))
        (local.set $b (v128.load offset=16 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=16 (local.get $out)
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
            (f32x4.demote_f64x2_zero (f64x2.mul (f64x2.promote_low_f32x4 (local.get $b)) (local.get $iv)))
            (f32x4.demote_f64x2_zero
              (f64x2.mul (f64x2.promote_low_f32x4 (local.get $bh)) (local.get $iv)))))
        (local.set $out (i32.add (local.get $out) (i32.const 32)))
        (local.set $block (i32.add (local.get $block) (i32.const 32)))
        (br $vloop)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $out) (local.get $end)))
        (f32.store (local.get $out)
          (f32.demote_f64 (f64.mul (f64.promote_f32 (f32.load (local.get $block))) (local.get $inv))))
        (local.set $out (i32.add (local.get $out) (i32.const 4)))
        (local.set $block (i32.add (local.get $block) (i32.const 4)))
        (br $tail))))

  ;; out[i] = f32((main[i] + f64(block[i])) * inv)                      (mean, both parts hold data)
  (func (export "mean_both") (param $out i32) (param $main i32) (param $block i32) (param $n i32) (param $inv f64)
    (local $iv v128) (local $vend i32) (local $end i32) (local $b v128) (local $bh v128)
    (local.set $iv (f64x2.splat (local.get $inv)))
    (local.set $vend (i32.add (local.get $out) (i32.shl (i32.and (local.get $n) (i32.const -8)) (i32.const 2))))
    (local.set $end (i32.add (local.get $out) (i32.shl (local.get $n) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $out) (local.get $vend)))
        (local.set $b (v128.load offset=0 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=0 (local.get $out)
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
            (f32x4.demote_f64x2_zero
              (f64x2.mul
                (f64x2.add (v128.load offset=0 (local.get $main)) (f64x2.promote_low_f32x4 (local.get $b)))
                (local.get $iv)))
            (f32x4.demote_f64x2_zero
              (f64x2.mul
                (f64x2.add (v128.load offset=16 (local.get $main))
                  (f64x2.promote_low_f32x4 (local.get $bh)))
                (local.get $iv)))))
        (local.set $b (v128.load offset=16 (local.get $block)))
        (local.set $bh (i8x16.shuffle 8 9 10 11 12 13 14 15 8 9 10 11 12 13 14 15 (local.get $b) (local.get $b)))
        (v128.store offset=16 (local.get $out)
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
            (f32x4.demote_f64x2_zero
              (f64x2.mul
                (f64x2.add (v128.load offset=32 (local.get $main)) (f64x2.promote_low_f32x4 (local.get $b)))
                (local.get $iv)))
            (f32x4.demote_f64x2_zero
              (f64x2.mul
                (f64x2.add (v128.load offset=48 (local.get $main))
                  (f64x2.promote_low_f32x4 (local.get $bh)))
                (local.get $iv)))))
        (local.set $out (i32.add (local.get $out) (i32.const 32)))
        (local.set $main (i32.add (local.get $main) (i32.const 64)))
        (local.set $block (i32.add (local.get $block) (i32.const 32)))
        (br $vloop)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $out) (local.get $end)))
        (f32.store (local.get $out)
          (f32.demote_f64
            (f64.mul
              (f64.add (f64.load (local.get $main)) (f64.promote_f32 (f32.load (local.get $block))))
              (local.get $inv))))
        (local.set $out (i32.add (local.get $out) (i32.const 4)))
        (local.set $main (i32.add (local.get $main) (i32.const 8)))
        (local.set $block (i32.add (local.get $block) (i32.const 4)))
        (br $tail))))
)
