;; SIMD kernels of the transformer (WebAssembly 128-bit SIMD), compiled into the bytes that
;; `simd_wasm.ts` holds for `simd.ts`; `bench/simd/build.ts` rebuilds them from this file.
;;
;; Every pointer is a byte offset into the exported memory; rows are contiguous float32.
;; exp is computed as 2^n * p(r) with n = round(y / ln 2), r = y - n ln 2 (Cody-Waite split
;; of ln 2) and p the degree-6 Taylor polynomial (Estrin's scheme), whose relative error on |r| <= ln(2) / 2
;; is about 1e-7, float32 precision. Inputs below -87 (exp(-87) ~ 1.6e-38) give 0, so that
;; 2^n stays a normal float.
(module
  (memory (export "memory") 1)

  ;; exp(y) for y <= 0, four lanes. n = round(y log2 e) comes from adding 1.5 * 2^23, which
  ;; leaves round(y log2 e) in the low mantissa bits; 2^n is built from those bits.
  (func $exp4 (param $y v128) (result v128)
    (local $t v128) (local $n v128) (local $r v128) (local $p v128) (local $q v128)
    (local $keep v128)
    ;; lanes below -87 (and -Infinity) give 0, NaN stays NaN
    (local.set $keep (v128.not (f32x4.lt (local.get $y) (v128.const f32x4 -87 -87 -87 -87))))
    (local.set $y (f32x4.pmax (local.get $y) (v128.const f32x4 -87 -87 -87 -87)))
    (local.set $t (f32x4.add
      (f32x4.mul (local.get $y) (v128.const f32x4 1.44269504 1.44269504 1.44269504 1.44269504))
      (v128.const f32x4 12582912 12582912 12582912 12582912)))
    (local.set $n (f32x4.sub (local.get $t) (v128.const f32x4 12582912 12582912 12582912 12582912)))
    (local.set $r (f32x4.sub
      (f32x4.sub (local.get $y)
        (f32x4.mul (local.get $n)
          (v128.const f32x4 0.693145751953125 0.693145751953125 0.693145751953125 0.693145751953125)))
      (f32x4.mul (local.get $n)
        (v128.const f32x4 1.428606765330187e-06 1.428606765330187e-06 1.428606765330187e-06 1.428606765330187e-06))))
    (local.set $q (f32x4.mul (local.get $r) (local.get $r)))
    ;; Estrin: (1 + r) + r^2 (1/2 + r/6) + r^4 (1/24 + r/120 + r^2/720)
    (local.set $p (f32x4.add
      (f32x4.add (v128.const f32x4 1 1 1 1) (local.get $r))
      (f32x4.mul (local.get $q)
        (f32x4.add
          (f32x4.add (v128.const f32x4 0.5 0.5 0.5 0.5)
            (f32x4.mul (local.get $r) (v128.const f32x4 0.16666667 0.16666667 0.16666667 0.16666667)))
          (f32x4.mul (local.get $q)
            (f32x4.add
              (f32x4.add (v128.const f32x4 0.041666667 0.041666667 0.041666667 0.041666667)
                (f32x4.mul (local.get $r) (v128.const f32x4 0.0083333333 0.0083333333 0.0083333333 0.0083333333)))
              (f32x4.mul (local.get $q) (v128.const f32x4 0.0013888889 0.0013888889 0.0013888889 0.0013888889))))))))
    ;; bits(t) - bits(1.5 * 2^23) = n; (n + 127) << 23 = bits(2^n)
    (v128.and (local.get $keep)
      (f32x4.mul (local.get $p)
        (i32x4.shl
          (i32x4.add (local.get $t) (v128.const i32x4 -1262485377 -1262485377 -1262485377 -1262485377))
          (i32.const 23)))))

  ;; exp(y) for y <= 0, one lane (the same arithmetic as $exp4).
  (func $exp1 (param $y f32) (result f32)
    (f32x4.extract_lane 0 (call $exp4 (f32x4.splat (local.get $y)))))

  ;; The largest of x[0 .. n), NaN skipped (-Infinity when n is 0 or all are NaN).
  (func $rowMax (param $x i32) (param $n i32) (result f32)
    (local $acc v128) (local $end i32) (local $m f32) (local $v f32)
    (local.set $acc (v128.const f32x4 -inf -inf -inf -inf))
    (local.set $end (i32.add (local.get $x) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done
      (loop $vec
        (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
        (local.set $acc (f32x4.pmax (local.get $acc) (v128.load (local.get $x))))
        (local.set $x (i32.add (local.get $x) (i32.const 16)))
        (br $vec)))
    (local.set $m (f32.max
      (f32.max (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
      (f32.max (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc)))))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
    (block $tdone
      (loop $tail
        (br_if $tdone (i32.ge_u (local.get $x) (local.get $end)))
        (local.set $v (f32.load (local.get $x)))
        (local.set $m (select (local.get $v) (local.get $m) (f32.gt (local.get $v) (local.get $m))))
        (local.set $x (i32.add (local.get $x) (i32.const 4)))
        (br $tail)))
    (local.get $m))

  ;; sum exp(x[i] - max) over i < n in double precision; with $store, exp(x[i] - max)
  ;; overwrites x[i].
  (func $sumExp (param $x i32) (param $n i32) (param $max f32) (param $store i32) (result f64)
    (local $end i32) (local $mv v128) (local $e v128) (local $lo v128) (local $hi v128)
    (local $s f64) (local $es f32)
    (local $k0 v128)(local $k1 v128)(local $k2 v128)(local $k3 v128)(local $k4 v128)(local $k5 v128)(local $k6 v128)(local $k7 v128)(local $k8 v128)(local $k9 v128)(local $k10 v128)(local $k11 v128) (local $ey v128) (local $et v128) (local $en v128) (local $er v128) (local $ep v128)
    (local $eq v128) (local $ekeep v128)
    (local.set $mv (f32x4.splat (local.get $max)))
    ;; the constants live in locals: V8 rebuilds a v128.const at every use inside a loop
    (local.set $k0 (v128.const f32x4 -87 -87 -87 -87))
    (local.set $k1 (v128.const f32x4 1.44269504 1.44269504 1.44269504 1.44269504))
    (local.set $k2 (v128.const f32x4 12582912 12582912 12582912 12582912))
    (local.set $k3 (v128.const f32x4 0.693145751953125 0.693145751953125 0.693145751953125 0.693145751953125))
    (local.set $k4 (v128.const f32x4 1.428606765330187e-06 1.428606765330187e-06 1.428606765330187e-06 1.428606765330187e-06))
    (local.set $k5 (v128.const f32x4 1 1 1 1))
    (local.set $k6 (v128.const f32x4 0.5 0.5 0.5 0.5))
    (local.set $k7 (v128.const f32x4 0.16666667 0.16666667 0.16666667 0.16666667))
    (local.set $k8 (v128.const f32x4 0.041666667 0.041666667 0.041666667 0.041666667))
    (local.set $k9 (v128.const f32x4 0.0083333333 0.0083333333 0.0083333333 0.0083333333))
    (local.set $k10 (v128.const f32x4 0.0013888889 0.0013888889 0.0013888889 0.0013888889))
    (local.set $k11 (v128.const i32x4 -1262485377 -1262485377 -1262485377 -1262485377))
    (local.set $lo (v128.const f64x2 0 0))
    (local.set $hi (v128.const f64x2 0 0))
    (local.set $end (i32.add (local.get $x) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done
      (loop $vec
        (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
        (local.set $ey (f32x4.sub (v128.load (local.get $x)) (local.get $mv)))
        (local.set $e
      (local.set $ekeep (v128.not (f32x4.lt (local.get $ey) (local.get $k0))))
      (local.set $ey (f32x4.pmax (local.get $ey) (local.get $k0)))
      (local.set $et (f32x4.add
        (f32x4.mul (local.get $ey) (local.get $k1))
        (local.get $k2)))
      (local.set $en (f32x4.sub (local.get $et) (local.get $k2)))
      (local.set $er (f32x4.sub
        (f32x4.sub (local.get $ey)
          (f32x4.mul (local.get $en)
            (local.get $k3)))
        (f32x4.mul (local.get $en)
          (local.get $k4))))
      (local.set $eq (f32x4.mul (local.get $er) (local.get $er)))
    ;; Estrin: (1 + r) + r^2 (1/2 + r/6) + r^4 (1/24 + r/120 + r^2/720)
    (local.set $ep (f32x4.add
      (f32x4.add (local.get $k5) (local.get $er))
      (f32x4.mul (local.get $eq)
        (f32x4.add
          (f32x4.add (local.get $k6)
            (f32x4.mul (local.get $er) (local.get $k7)))
          (f32x4.mul (local.get $eq)
            (f32x4.add
              (f32x4.add (local.get $k8)
                (f32x4.mul (local.get $er) (local.get $k9)))
              (f32x4.mul (local.get $eq) (local.get $k10))))))))
      ;; bits(t) - bits(1.5 * 2^23) = n; (n + 127) << 23 = bits(2^n)
      (v128.and (local.get $ekeep)
        (f32x4.mul (local.get $ep)
          (i32x4.shl
            (i32x4.add (local.get $et) (local.get $k11))
            (i32.const 23)))))
        (if (local.get $store) (then (v128.store (local.get $x) (local.get $e))))
        (local.set $lo (f64x2.add (local.get $lo) (f64x2.promote_low_f32x4 (local.get $e))))
        (local.set $hi (f64x2.add (local.get $hi) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $e) (local.get $e)))))
        (local.set $x (i32.add (local.get $x) (i32.const 16)))
        (br $vec)))
    (local.set $lo (f64x2.add (local.get $lo) (local.get $hi)))
    (local.set $s (f64.add (f64x2.extract_lane 0 (local.get $lo)) (f64x2.extract_lane 1 (local.get $lo))))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
    (block $tdone
      (loop $tail
        (br_if $tdone (i32.ge_u (local.get $x) (local.get $end)))
        (local.set $es (call $exp1 (f32.sub (f32.load (local.get $x)) (local.get $max))))
        (if (local.get $store) (then (f32.store (local.get $x) (local.get $es))))
        (local.set $s (f64.add (local.get $s) (f64.promote_f32 (local.get $es))))
        (local.set $x (i32.add (local.get $x) (i32.const 4)))
        (br $tail)))
    (local.get $s))

  ;; For each of `rows` rows of n floats at $x: maxOut[r] = max (as f64), sumOut[r] =
  ;; sum exp(x - max) (f64); with $store the row is overwritten by exp(x - max).
  (func (export "lseRows") (param $x i32) (param $rows i32) (param $n i32) (param $store i32)
    (param $maxOut i32) (param $sumOut i32)
    (local $r i32) (local $m f32)
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $m (call $rowMax (local.get $x) (local.get $n)))
        (f64.store (local.get $maxOut) (f64.promote_f32 (local.get $m)))
        (f64.store (local.get $sumOut)
          (call $sumExp (local.get $x) (local.get $n) (local.get $m) (local.get $store)))
        (local.set $x (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
        (local.set $maxOut (i32.add (local.get $maxOut) (i32.const 8)))
        (local.set $sumOut (i32.add (local.get $sumOut) (i32.const 8)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))

  ;; The first i < n with x[i] == v, or -1.
  (func (export "indexOf") (param $x i32) (param $n i32) (param $v f32) (result i32)
    (local $i i32) (local $vv v128) (local $end i32)
    (local.set $vv (f32x4.splat (local.get $v)))
    (local.set $end (i32.and (local.get $n) (i32.const -4)))
    (block $vdone
      (loop $vec
        (br_if $vdone (i32.ge_u (local.get $i) (local.get $end)))
        (br_if $vdone (v128.any_true (f32x4.eq
          (v128.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))
          (local.get $vv))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $vec)))
    (block $found
      (loop $scan
        (br_if $found (i32.ge_u (local.get $i) (local.get $n)))
        (if (f32.eq (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2))))
              (local.get $v))
          (then (return (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const -1))

  ;; One query row attending over n keys, every head: head h reads its query at
  ;; q + 4 h dk, its keys and values at keys/vals + h headStride + 4 s dk (bytes), skips
  ;; key s when $mask is not 0 and the byte mask[s] is 0, and writes softmax(q.k scale) . v
  ;; to out + 4 h dk (zeros when no key is visible). $scores is scratch for n floats.
  (func (export "attend") (param $q i32) (param $keys i32) (param $vals i32)
    (param $headStride i32) (param $n i32) (param $mask i32) (param $heads i32) (param $dk i32)
    (param $scale f32) (param $scores i32) (param $out i32)
    (local $h i32) (local $s i32) (local $i i32) (local $kb i32) (local $vb i32) (local $qh i32)
    (local $oh i32) (local $acc v128) (local $dot f32) (local $max f32) (local $sum f32)
    (local $e f32) (local $wv v128) (local $bytes i32) (local $p i32)
    (local.set $bytes (i32.shl (local.get $dk) (i32.const 2)))
    (block $hdone
      (loop $head
        (br_if $hdone (i32.ge_u (local.get $h) (local.get $heads)))
        (local.set $qh (i32.add (local.get $q) (i32.mul (local.get $h) (local.get $bytes))))
        (local.set $oh (i32.add (local.get $out) (i32.mul (local.get $h) (local.get $bytes))))
        (local.set $kb (i32.add (local.get $keys) (i32.mul (local.get $h) (local.get $headStride))))
        (local.set $vb (i32.add (local.get $vals) (i32.mul (local.get $h) (local.get $headStride))))
        ;; scores and their maximum
        (local.set $max (f32.const -inf))
        (local.set $s (i32.const 0))
        (block $sdone
          (loop $score
            (br_if $sdone (i32.ge_u (local.get $s) (local.get $n)))
            (if (i32.and (i32.ne (local.get $mask) (i32.const 0))
                  (i32.eqz (i32.load8_u (i32.add (local.get $mask) (local.get $s)))))
              (then (local.set $dot (f32.const -inf)))
              (else
                (local.set $p (i32.add (local.get $kb) (i32.mul (local.get $s) (local.get $bytes))))
                (local.set $acc (v128.const f32x4 0 0 0 0))
                (local.set $i (i32.const 0))
                (block $ddone
                  (loop $dotl
                    (br_if $ddone (i32.ge_u (local.get $i) (local.get $bytes)))
                    (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul
                      (v128.load (i32.add (local.get $qh) (local.get $i)))
                      (v128.load (i32.add (local.get $p) (local.get $i))))))
                    (local.set $i (i32.add (local.get $i) (i32.const 16)))
                    (br $dotl)))
                (local.set $dot (f32.mul (local.get $scale) (f32.add
                  (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
                  (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc))))))
                (if (f32.gt (local.get $dot) (local.get $max)) (then (local.set $max (local.get $dot))))))
            (f32.store (i32.add (local.get $scores) (i32.shl (local.get $s) (i32.const 2))) (local.get $dot))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $score)))
        ;; out = 0, then (unless nothing is visible) the softmax-weighted sum of the values
        (local.set $i (i32.const 0))
        (block $zdone
          (loop $zero
            (br_if $zdone (i32.ge_u (local.get $i) (local.get $bytes)))
            (v128.store (i32.add (local.get $oh) (local.get $i)) (v128.const f32x4 0 0 0 0))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $zero)))
        (if (f32.ne (local.get $max) (f32.const -inf))
          (then
            (local.set $sum (f32.const 0))
            (local.set $s (i32.const 0))
            (block $edone
              (loop $expl
                (br_if $edone (i32.ge_u (local.get $s) (local.get $n)))
                (local.set $p (i32.add (local.get $scores) (i32.shl (local.get $s) (i32.const 2))))
                (local.set $e (call $exp1 (f32.sub (f32.load (local.get $p)) (local.get $max))))
                (f32.store (local.get $p) (local.get $e))
                (local.set $sum (f32.add (local.get $sum) (local.get $e)))
                (local.set $s (i32.add (local.get $s) (i32.const 1)))
                (br $expl)))
            (local.set $sum (f32.div (f32.const 1) (local.get $sum)))
            (local.set $s (i32.const 0))
            (block $wdone
              (loop $wsum
                (br_if $wdone (i32.ge_u (local.get $s) (local.get $n)))
                (local.set $e (f32.mul (local.get $sum)
                  (f32.load (i32.add (local.get $scores) (i32.shl (local.get $s) (i32.const 2))))))
                (if (f32.ne (local.get $e) (f32.const 0))
                  (then
                    (local.set $wv (f32x4.splat (local.get $e)))
                    (local.set $p (i32.add (local.get $vb) (i32.mul (local.get $s) (local.get $bytes))))
                    (local.set $i (i32.const 0))
                    (block $adone
                      (loop $axpy
                        (br_if $adone (i32.ge_u (local.get $i) (local.get $bytes)))
                        (v128.store (i32.add (local.get $oh) (local.get $i))
                          (f32x4.add (v128.load (i32.add (local.get $oh) (local.get $i)))
                            (f32x4.mul (local.get $wv) (v128.load (i32.add (local.get $p) (local.get $i))))))
                        (local.set $i (i32.add (local.get $i) (i32.const 16)))
                        (br $axpy)))))
                (local.set $s (i32.add (local.get $s) (i32.const 1)))
                (br $wsum)))))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $head))))

  ;; Layer norm of `rows` rows of d floats (d a multiple of 4) at $x: y = xhat gamma + beta
  ;; with xhat = (x - mean) / sqrt(var + eps); with $xhat not 0, xhat and 1 / sqrt(var + eps)
  ;; (one float per row at $rstd) are written too. Sums in float32, four lanes.
  (func (export "layerNorm") (param $x i32) (param $y i32) (param $xhat i32) (param $rstd i32)
    (param $rows i32) (param $d i32) (param $gamma i32) (param $beta i32) (param $eps f32)
    (local $r i32) (local $i i32) (local $bytes i32) (local $acc v128) (local $c v128)
    (local $mean f32) (local $s f32) (local $mv v128) (local $sv v128) (local $h v128)
    (local.set $bytes (i32.shl (local.get $d) (i32.const 2)))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $acc (v128.const f32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $sdone
          (loop $sum
            (br_if $sdone (i32.ge_u (local.get $i) (local.get $bytes)))
            (local.set $acc (f32x4.add (local.get $acc) (v128.load (i32.add (local.get $x) (local.get $i)))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $sum)))
        (local.set $mean (f32.div
          (f32.add
            (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
            (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc))))
          (f32.convert_i32_u (local.get $d))))
        (local.set $mv (f32x4.splat (local.get $mean)))
        (local.set $acc (v128.const f32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $vdone
          (loop $var
            (br_if $vdone (i32.ge_u (local.get $i) (local.get $bytes)))
            (local.set $c (f32x4.sub (v128.load (i32.add (local.get $x) (local.get $i))) (local.get $mv)))
            (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (local.get $c) (local.get $c))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $var)))
        (local.set $s (f32.div (f32.const 1) (f32.sqrt (f32.add (local.get $eps) (f32.div
          (f32.add
            (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
            (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc))))
          (f32.convert_i32_u (local.get $d)))))))
        (local.set $sv (f32x4.splat (local.get $s)))
        (if (local.get $xhat) (then
          (f32.store (i32.add (local.get $rstd) (i32.shl (local.get $r) (i32.const 2))) (local.get $s))))
        (local.set $i (i32.const 0))
        (block $ndone
          (loop $norm
            (br_if $ndone (i32.ge_u (local.get $i) (local.get $bytes)))
            (local.set $h (f32x4.mul (local.get $sv)
              (f32x4.sub (v128.load (i32.add (local.get $x) (local.get $i))) (local.get $mv))))
            (if (local.get $xhat) (then
              (v128.store (i32.add (local.get $xhat) (local.get $i)) (local.get $h))))
            (v128.store (i32.add (local.get $y) (local.get $i))
              (f32x4.add (v128.load (i32.add (local.get $beta) (local.get $i)))
                (f32x4.mul (local.get $h) (v128.load (i32.add (local.get $gamma) (local.get $i))))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $norm)))
        (local.set $x (i32.add (local.get $x) (local.get $bytes)))
        (local.set $y (i32.add (local.get $y) (local.get $bytes)))
        (if (local.get $xhat) (then
          (local.set $xhat (i32.add (local.get $xhat) (local.get $bytes)))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))

  ;; Backward pass of layerNorm for `rows` rows: dx = rstd (g - mean(g) - xhat mean(g xhat))
  ;; with g = dy gamma, plus $res when it is not 0; dGamma += dy xhat and dBeta += dy
  ;; (d floats each, accumulated over the rows).
  (func (export "layerNormBackward") (param $dy i32) (param $xhat i32) (param $rstd i32)
    (param $res i32) (param $dx i32) (param $rows i32) (param $d i32) (param $gamma i32)
    (param $dGamma i32) (param $dBeta i32)
    (local $r i32) (local $i i32) (local $bytes i32) (local $a v128) (local $c v128)
    (local $gy v128) (local $hv v128) (local $g v128) (local $av v128) (local $cv v128)
    (local $sv v128) (local $out v128) (local $inv f32)
    (local.set $bytes (i32.shl (local.get $d) (i32.const 2)))
    (local.set $inv (f32.div (f32.const 1) (f32.convert_i32_u (local.get $d))))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $a (v128.const f32x4 0 0 0 0))
        (local.set $c (v128.const f32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $sdone
          (loop $sums
            (br_if $sdone (i32.ge_u (local.get $i) (local.get $bytes)))
            (local.set $gy (v128.load (i32.add (local.get $dy) (local.get $i))))
            (local.set $hv (v128.load (i32.add (local.get $xhat) (local.get $i))))
            (local.set $g (f32x4.mul (local.get $gy) (v128.load (i32.add (local.get $gamma) (local.get $i)))))
            (local.set $a (f32x4.add (local.get $a) (local.get $g)))
            (local.set $c (f32x4.add (local.get $c) (f32x4.mul (local.get $g) (local.get $hv))))
            (v128.store (i32.add (local.get $dGamma) (local.get $i))
              (f32x4.add (v128.load (i32.add (local.get $dGamma) (local.get $i)))
                (f32x4.mul (local.get $gy) (local.get $hv))))
            (v128.store (i32.add (local.get $dBeta) (local.get $i))
              (f32x4.add (v128.load (i32.add (local.get $dBeta) (local.get $i))) (local.get $gy)))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $sums)))
        (local.set $av (f32x4.splat (f32.mul (local.get $inv) (f32.add
          (f32.add (f32x4.extract_lane 0 (local.get $a)) (f32x4.extract_lane 1 (local.get $a)))
          (f32.add (f32x4.extract_lane 2 (local.get $a)) (f32x4.extract_lane 3 (local.get $a)))))))
        (local.set $cv (f32x4.splat (f32.mul (local.get $inv) (f32.add
          (f32.add (f32x4.extract_lane 0 (local.get $c)) (f32x4.extract_lane 1 (local.get $c)))
          (f32.add (f32x4.extract_lane 2 (local.get $c)) (f32x4.extract_lane 3 (local.get $c)))))))
        (local.set $sv (f32x4.splat (f32.load (i32.add (local.get $rstd) (i32.shl (local.get $r) (i32.const 2))))))
        (local.set $i (i32.const 0))
        (block $ddone
          (loop $dxl
            (br_if $ddone (i32.ge_u (local.get $i) (local.get $bytes)))
            (local.set $out (f32x4.mul (local.get $sv)
              (f32x4.sub
                (f32x4.sub
                  (f32x4.mul (v128.load (i32.add (local.get $dy) (local.get $i)))
                    (v128.load (i32.add (local.get $gamma) (local.get $i))))
                  (local.get $av))
                (f32x4.mul (v128.load (i32.add (local.get $xhat) (local.get $i))) (local.get $cv)))))
            (if (local.get $res) (then
              (local.set $out (f32x4.add (local.get $out) (v128.load (i32.add (local.get $res) (local.get $i)))))))
            (v128.store (i32.add (local.get $dx) (local.get $i)) (local.get $out))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $dxl)))
        (local.set $dy (i32.add (local.get $dy) (local.get $bytes)))
        (local.set $xhat (i32.add (local.get $xhat) (local.get $bytes)))
        (local.set $dx (i32.add (local.get $dx) (local.get $bytes)))
        (if (local.get $res) (then (local.set $res (i32.add (local.get $res) (local.get $bytes)))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))

  ;; x[r][j] = x[r][j] k[r] + c[r] for `rows` rows of n floats; k and c are f64 per row.
  (func (export "scaleShiftRows") (param $x i32) (param $rows i32) (param $n i32)
    (param $k i32) (param $c i32)
    (local $r i32) (local $end i32) (local $kv v128) (local $cv v128) (local $ks f32) (local $cs f32)
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $ks (f32.demote_f64 (f64.load (i32.add (local.get $k) (i32.shl (local.get $r) (i32.const 3))))))
        (local.set $cs (f32.demote_f64 (f64.load (i32.add (local.get $c) (i32.shl (local.get $r) (i32.const 3))))))
        (local.set $kv (f32x4.splat (local.get $ks)))
        (local.set $cv (f32x4.splat (local.get $cs)))
        (local.set $end (i32.add (local.get $x) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
        (block $vdone
          (loop $vec
            (br_if $vdone (i32.ge_u (local.get $x) (local.get $end)))
            (v128.store (local.get $x)
              (f32x4.add (f32x4.mul (v128.load (local.get $x)) (local.get $kv)) (local.get $cv)))
            (local.set $x (i32.add (local.get $x) (i32.const 16)))
            (br $vec)))
        (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
        (block $tdone
          (loop $tail
            (br_if $tdone (i32.ge_u (local.get $x) (local.get $end)))
            (f32.store (local.get $x)
              (f32.add (f32.mul (f32.load (local.get $x)) (local.get $ks)) (local.get $cs)))
            (local.set $x (i32.add (local.get $x) (i32.const 4)))
            (br $tail)))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))

  ;; x = max(x, 0) over n floats in place (NaN stays NaN).
  (func (export "relu") (param $x i32) (param $n i32)
    (local $end i32) (local $z v128)
    (local.set $z (v128.const f32x4 0 0 0 0))
    (local.set $end (i32.add (local.get $x) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done
      (loop $vec
        (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
        (v128.store (local.get $x) (f32x4.max (v128.load (local.get $x)) (local.get $z)))
        (local.set $x (i32.add (local.get $x) (i32.const 16)))
        (br $vec)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
    (block $tdone
      (loop $tail
        (br_if $tdone (i32.ge_u (local.get $x) (local.get $end)))
        (f32.store (local.get $x) (f32.max (f32.load (local.get $x)) (f32.const 0)))
        (local.set $x (i32.add (local.get $x) (i32.const 4)))
        (br $tail))))

  ;; dy = dy * (y > 0 ? 1 : 0) over n floats in place (the ReLU's backward pass).
  (func (export "reluGrad") (param $dy i32) (param $y i32) (param $n i32)
    (local $end i32) (local $z v128) (local $one v128)
    (local.set $z (v128.const f32x4 0 0 0 0))
    (local.set $one (v128.const f32x4 1 1 1 1))
    (local.set $end (i32.add (local.get $dy) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done
      (loop $vec
        (br_if $done (i32.ge_u (local.get $dy) (local.get $end)))
        (v128.store (local.get $dy) (f32x4.mul (v128.load (local.get $dy))
          (v128.and (f32x4.gt (v128.load (local.get $y)) (local.get $z)) (local.get $one))))
        (local.set $dy (i32.add (local.get $dy) (i32.const 16)))
        (local.set $y (i32.add (local.get $y) (i32.const 16)))
        (br $vec)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
    (block $tdone
      (loop $tail
        (br_if $tdone (i32.ge_u (local.get $dy) (local.get $end)))
        (f32.store (local.get $dy) (f32.mul (f32.load (local.get $dy))
          (select (f32.const 1) (f32.const 0) (f32.gt (f32.load (local.get $y)) (f32.const 0)))))
        (local.set $dy (i32.add (local.get $dy) (i32.const 4)))
        (local.set $y (i32.add (local.get $y) (i32.const 4)))
        (br $tail))))

  ;; Softmax of each of `rows` rows of n floats in place; row r sees its first
  ;; min(r mod tq + 1, n) entries when $causal (the rest become 0), all n otherwise.
  (func (export "softmaxRows") (param $x i32) (param $rows i32) (param $n i32) (param $tq i32)
    (param $causal i32)
    (local $r i32) (local $s i32) (local $last i32) (local $max f32) (local $inv f32)
    (local $p i32)
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $last (local.get $n))
        (if (local.get $causal) (then
          (local.set $last (i32.add (i32.rem_u (local.get $r) (local.get $tq)) (i32.const 1)))
          (if (i32.gt_u (local.get $last) (local.get $n)) (then (local.set $last (local.get $n))))))
        (local.set $max (call $rowMax (local.get $x) (local.get $last)))
        (local.set $inv (f32.demote_f64 (f64.div (f64.const 1)
          (call $sumExp (local.get $x) (local.get $last) (local.get $max) (i32.const 1)))))
        (local.set $s (i32.const 0))
        (block $ndone
          (loop $norm
            (br_if $ndone (i32.ge_u (local.get $s) (local.get $n)))
            (local.set $p (i32.add (local.get $x) (i32.shl (local.get $s) (i32.const 2))))
            (f32.store (local.get $p)
              (select (f32.mul (f32.load (local.get $p)) (local.get $inv)) (f32.const 0)
                (i32.lt_u (local.get $s) (local.get $last))))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $norm)))
        (local.set $x (i32.add (local.get $x) (i32.shl (local.get $n) (i32.const 2))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))

  ;; Softmax backward in place: dp = p (dp - sum(dp p)) for `rows` rows of n floats.
  (func (export "softmaxGradRows") (param $p i32) (param $dp i32) (param $rows i32) (param $n i32)
    (local $r i32) (local $s i32) (local $dot f32) (local $a i32) (local $b i32)
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $dot (f32.const 0))
        (local.set $s (i32.const 0))
        (block $ddone
          (loop $dotl
            (br_if $ddone (i32.ge_u (local.get $s) (local.get $n)))
            (local.set $a (i32.add (local.get $p) (i32.shl (local.get $s) (i32.const 2))))
            (local.set $b (i32.add (local.get $dp) (i32.shl (local.get $s) (i32.const 2))))
            (local.set $dot (f32.add (local.get $dot) (f32.mul (f32.load (local.get $a)) (f32.load (local.get $b)))))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $dotl)))
        (local.set $s (i32.const 0))
        (block $gdone
          (loop $grad
            (br_if $gdone (i32.ge_u (local.get $s) (local.get $n)))
            (local.set $a (i32.add (local.get $p) (i32.shl (local.get $s) (i32.const 2))))
            (local.set $b (i32.add (local.get $dp) (i32.shl (local.get $s) (i32.const 2))))
            (f32.store (local.get $b)
              (f32.mul (f32.load (local.get $a)) (f32.sub (f32.load (local.get $b)) (local.get $dot))))
            (local.set $s (i32.add (local.get $s) (i32.const 1)))
            (br $grad)))
        (local.set $p (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
        (local.set $dp (i32.add (local.get $dp) (i32.shl (local.get $n) (i32.const 2))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row))))
)
