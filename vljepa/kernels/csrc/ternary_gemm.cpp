// int8 activations x packed 2-bit ternary weights on x86 AVX2: Y = Q8(X) @ (codes * scale)^T + b.
//
// The weights are read as they are stored (vljepa.kernels.bitlinear.pack_ternary): the (N, K)
// weight flattened row-major, code c = w + 1 in {0, 1, 2}, four codes per byte, lowest bits
// first. So byte j of a row holds k = 4j .. 4j+3. Instead of moving weight bits around, the
// caller permutes the (small) int8 activations once per call: within each block of 128 inputs,
// x is reordered to [x[4j] for j < 32], [x[4j+1]], [x[4j+2]], [x[4j+3]], so that
// (bytes >> 2s) & 3 over 32 bytes lines up with the s-th 32-byte slice of the permuted block.
// A last block of 64 inputs or fewer (K % 128 in 1..64, e.g. K = 192) is packed tighter, in
// 16-byte slices ([x[4j]], j < 16, then [x[4j+1]], ...), so no work is spent on its zero half.
//
// As bitnet.cpp's I2_S kernel: _mm256_maddubs_epi16(unsigned code c, signed int8 x) sums pairs
// c*x into int16, then sum_k w*x = sum_k c*x - sum_k x (the caller passes sum_k x per row).
// int16 partial sums stay below 2 * 2 * 128 * 4 * 8 = 16384 (flushed to int32 every 8 blocks).
// Each unpacked 32-byte weight slice is used against up to 4 activation rows (register tile
// NR weight rows x MR activation rows); threads split the output rows (at::parallel_for).
// From kUnpackRows activation rows on (a batch of sequences), a chunk of 64 weight rows is
// unpacked once to a byte per code in a per-thread scratch buffer (64 x K bytes, reused for
// every activation row; the layer itself stays packed) and the tiles read those bytes: at
// K = 192 this doubles the rate, as the shift-and-mask no longer repeats per row group.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int kBlock = 128;       // inputs per block
constexpr int kBlockBytes = 32;   // packed bytes per block
constexpr int kFlush = 8;         // blocks between int16 -> int32 flushes
constexpr int64_t kChunk = 64;    // output rows per work item
constexpr int64_t kMR = 3;  // activation rows per unpacked tile (4 weight rows x 3; 2 and 4 measured alike)
constexpr int64_t kUnpackRows = 16;  // from this many activation rows, unpack codes per chunk

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// out[i] = the sum of a[i]'s eight int32 lanes, for i < N; four accumulators at a time.
template <int N>
inline void store_hsums(const __m256i* a, int32_t* out) {
  int i = 0;
  for (; i + 4 <= N; i += 4) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a[i], a[i + 1]),
                                        _mm256_hadd_epi32(a[i + 2], a[i + 3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
  }
  for (; i < N; ++i) out[i] = hsum(a[i]);
}

// out[m * NR + r] = sum over the row's blocks of codes(w[r]) . x[m] (no -sum(x) correction).
// w[r]: the row's full blocks; tail[r]: its last, zero-padded block (tail_bytes of it used: a whole block if > 16, else its first half).
template <int NR, int MR>
inline void tile(const uint8_t* const* w, const uint8_t* const* tail, int64_t nfull,
                 int64_t tail_bytes, const int8_t* x, int64_t xstride, int32_t* out) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc16[NR][MR];
  __m256i acc32[NR][MR];
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m) acc16[r][m] = acc32[r][m] = _mm256_setzero_si256();
  // Plain loops, no lambdas or address-taking: the accumulators must stay in registers.
  const int64_t nb = nfull + (tail_bytes > 16 ? 1 : 0);  // whole blocks (a long tail counts)
  int pending = 0;
  for (int64_t b = 0; b < nb; ++b) {
    __m256i p[NR];
    for (int r = 0; r < NR; ++r) {
      p[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
          b < nfull ? w[r] + b * kBlockBytes : tail[r]));
      // the packed matrix is read as one forward stream: ask for what comes 8 KiB later (paper
      // shape, 1 token: 15.6 -> 13-14 ms against 2 KiB; 16 and 32 KiB measured alike)
      _mm_prefetch(reinterpret_cast<const char*>(w[r] + b * kBlockBytes + 8192), _MM_HINT_T0);
    }
    const int8_t* xb = x + b * kBlock;
    for (int s = 0; s < 4; ++s) {
      __m256i c[NR];
      for (int r = 0; r < NR; ++r) c[r] = _mm256_and_si256(_mm256_srli_epi16(p[r], 2 * s), m3);
      for (int m = 0; m < MR; ++m) {
        const __m256i xv = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(xb + m * xstride + s * 32));
        for (int r = 0; r < NR; ++r)
          acc16[r][m] = _mm256_add_epi16(acc16[r][m], _mm256_maddubs_epi16(c[r], xv));
      }
    }
    if (++pending == kFlush) {
      for (int r = 0; r < NR; ++r)
        for (int m = 0; m < MR; ++m) {
          acc32[r][m] = _mm256_add_epi32(acc32[r][m], _mm256_madd_epi16(acc16[r][m], ones));
          acc16[r][m] = _mm256_setzero_si256();
        }
      pending = 0;
    }
  }
  if (tail_bytes > 0 && tail_bytes <= 16) {  // half a block (64 inputs or fewer): 128-bit lanes only
    const __m128i m3h = _mm_set1_epi8(3);
    __m128i p[NR];
    for (int r = 0; r < NR; ++r) p[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tail[r]));
    const int8_t* xb = x + nfull * kBlock;
    for (int s = 0; s < 4; ++s) {
      __m128i c[NR];
      for (int r = 0; r < NR; ++r) c[r] = _mm_and_si128(_mm_srli_epi16(p[r], 2 * s), m3h);
      for (int m = 0; m < MR; ++m) {
        const __m128i xv = _mm_loadu_si128(
            reinterpret_cast<const __m128i*>(xb + m * xstride + s * 16));
        for (int r = 0; r < NR; ++r)
          acc16[r][m] = _mm256_add_epi16(
              acc16[r][m], _mm256_zextsi128_si256(_mm_maddubs_epi16(c[r], xv)));
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m)
      acc32[r][m] = _mm256_add_epi32(acc32[r][m], _mm256_madd_epi16(acc16[r][m], ones));
  // horizontal sums in m-major order (out[m * NR + r]: a row of outputs is contiguous in n)
  __m256i a[NR * MR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) a[m * NR + r] = acc32[r][m];
  store_hsums<NR * MR>(a, out);
}

template <int NR>
inline void tile_m(int mr, const uint8_t* const* w, const uint8_t* const* tail, int64_t nfull,
                   int64_t tail_bytes, const int8_t* x, int64_t xstride, int32_t* out) {
  switch (mr) {
    case 1: tile<NR, 1>(w, tail, nfull, tail_bytes, x, xstride, out); break;
    case 2: tile<NR, 2>(w, tail, nfull, tail_bytes, x, xstride, out); break;
    case 3: tile<NR, 3>(w, tail, nfull, tail_bytes, x, xstride, out); break;
    default: tile<NR, 4>(w, tail, nfull, tail_bytes, x, xstride, out); break;
  }
}

// Many activation rows: each chunk of weight rows is unpacked once to one code byte per weight
// (in x's permuted order) and then read against every activation row, so the shift-and-mask
// work is paid once per weight instead of once per (weight, MR rows). cb: NR rows of codes,
// Kp bytes apart; x: MR rows, xstride apart. out[m * NR + r] = codes(r) . x[m].
// int16 partial sums are folded into int32 every kFlush blocks (32 slices: |sum| <= 16384).
template <int NR, int MR>
inline void tile_u(const uint8_t* cb, int64_t Klen, const int8_t* x, int64_t xstride,
                   int32_t* out) {
  const int64_t Kp = xstride;  // the code rows are as far apart as the activation rows
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i tot[NR][MR];
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MR; ++m) tot[r][m] = _mm256_setzero_si256();
  for (int64_t k0 = 0; k0 < Klen; k0 += kFlush * kBlock) {
    const int64_t k1 = std::min(Klen, k0 + kFlush * kBlock);
    __m256i acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; k += 32) {
      __m256i c[NR];
      for (int r = 0; r < NR; ++r)
        c[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + r * Kp + k));
      for (int m = 0; m < MR; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * xstride + k));
        for (int r = 0; r < NR; ++r)
          acc[r][m] = _mm256_add_epi16(acc[r][m], _mm256_maddubs_epi16(c[r], xv));
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MR; ++m)
        tot[r][m] = _mm256_add_epi32(tot[r][m], _mm256_madd_epi16(acc[r][m], ones));
  }
  __m256i a[NR * MR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) a[m * NR + r] = tot[r][m];
  store_hsums<NR * MR>(a, out);
}

template <int NR>
inline void tile_u_m(int mr, const uint8_t* cb, int64_t Klen, const int8_t* x, int64_t xstride,
                     int32_t* out) {
  switch (mr) {
    case 1: tile_u<NR, 1>(cb, Klen, x, xstride, out); break;
    case 2: tile_u<NR, 2>(cb, Klen, x, xstride, out); break;
    case 3: tile_u<NR, 3>(cb, Klen, x, xstride, out); break;
    default: tile_u<NR, 4>(cb, Klen, x, xstride, out); break;
  }
}

// Code of weight (row n, column k) in the flat packing.
inline uint8_t code_at(const uint8_t* packed, int64_t i) {
  return (packed[i >> 2] >> (2 * (i & 3))) & 3;
}

}  // namespace

// xq: (M, Kp) int8, permuted per 128-block as described above, zero past K; Kp = ceil(K/128)*128.
// xsum: (M,) int32 = sum_k xq. xscale: (M,) fp32, the dequantisation factor per row (1/s, i.e.
// max|x| / 127). packed: (ceil(N*K/4),) uint8. wscale: () fp32. bias: (N,) fp32 or empty.
// Returns (M, N) fp32: (dot - xsum) * xscale * wscale + bias.
torch::Tensor ternary_gemm(torch::Tensor xq, torch::Tensor xsum, torch::Tensor xscale,
                           torch::Tensor packed, int64_t N, int64_t K, torch::Tensor wscale,
                           torch::Tensor bias) {
  TORCH_CHECK(xq.dtype() == torch::kInt8 && xq.dim() == 2 && xq.is_contiguous(), "xq");
  TORCH_CHECK(packed.dtype() == torch::kUInt8 && packed.dim() == 1 && packed.is_contiguous(),
              "packed");
  TORCH_CHECK(packed.numel() == (N * K + 3) / 4, "packed length");
  const int64_t M = xq.size(0), Kp = xq.size(1);
  const int64_t nblk_all = (K + kBlock - 1) / kBlock;
  TORCH_CHECK(Kp == nblk_all * kBlock, "xq width");
  const bool aligned = (K % 4) == 0;
  const int64_t row_bytes = (K + 3) / 4;           // bytes of one row (aligned copy if needed)
  const int64_t nfull = row_bytes / kBlockBytes;   // full 32-byte blocks per row
  const int64_t tail_bytes = row_bytes % kBlockBytes;
  const bool has_tail = tail_bytes != 0;
  const bool half_tail = has_tail && tail_bytes <= 16;  // last block packed in 16-byte slices
  const int64_t nwhole = nfull + (has_tail && !half_tail ? 1 : 0);  // blocks of 4 x 32 bytes
  const int64_t Klen = nwhole * kBlock + (half_tail ? 64 : 0);  // activation bytes read per row
  auto out = torch::empty({M, N}, torch::kFloat32);
  const int8_t* X = xq.data_ptr<int8_t>();
  const int32_t* XS = xsum.data_ptr<int32_t>();
  const float* XF = xscale.data_ptr<float>();
  const uint8_t* P = packed.data_ptr<uint8_t>();
  const float ws = wscale.item<float>();
  TORCH_CHECK(!bias.defined() || (bias.dtype() == torch::kFloat32 && bias.numel() == N &&
              bias.is_contiguous()), "bias");
  const float* B = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  const int64_t nchunks = (N + kChunk - 1) / kChunk;

  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<uint8_t> rowbuf(aligned ? 0 : kChunk * row_bytes);
    std::vector<uint8_t> tailbuf(kChunk * kBlockBytes);
    std::vector<const uint8_t*> wrow(kChunk), trow(kChunk);
    int32_t acc[16];
    std::vector<uint8_t> codebuf(M >= kUnpackRows ? kChunk * Kp : 0);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * kChunk, n1 = std::min(N, n0 + kChunk), nc = n1 - n0;
      for (int64_t i = 0; i < nc; ++i) {
        const int64_t n = n0 + i;
        const uint8_t* row;
        if (aligned) {
          row = P + n * row_bytes;
        } else {  // rows do not start on a byte: copy this one to a byte-aligned packing
          uint8_t* dst = rowbuf.data() + i * row_bytes;
          std::memset(dst, 0, row_bytes);
          for (int64_t k = 0; k < K; ++k) dst[k >> 2] |= code_at(P, n * K + k) << (2 * (k & 3));
          row = dst;
        }
        wrow[i] = row;
        uint8_t* t = tailbuf.data() + i * kBlockBytes;
        std::memset(t, 0, kBlockBytes);  // code 0 past K meets x = 0
        if (has_tail) std::memcpy(t, row + nfull * kBlockBytes, tail_bytes);
        trow[i] = t;
      }
      // y = (dot - sum x) * xscale * wscale + bias for a tile: acc[m * nr + r] is the dot
      // of activation row m0 + m with weight row n0 + i + r
      auto emit = [&](const int32_t* acc, int64_t m0, int mr, int64_t i, int nr) {
        const int64_t n = n0 + i;
        for (int m = 0; m < mr; ++m) {
          const int64_t mm = m0 + m;
          const int32_t* a = acc + m * nr;
          float* o = O + mm * N + n;
          if (nr == 4) {
            __m128 y = _mm_mul_ps(
                _mm_cvtepi32_ps(_mm_sub_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)),
                                              _mm_set1_epi32(XS[mm]))),
                _mm_set1_ps(XF[mm] * ws));
            if (B) y = _mm_add_ps(y, _mm_loadu_ps(B + n));
            _mm_storeu_ps(o, y);
          } else {
            const float f = XF[mm] * ws;
            for (int r = 0; r < nr; ++r) {
              const float y = static_cast<float>(a[r] - XS[mm]) * f;
              o[r] = B ? y + B[n + r] : y;
            }
          }
        }
      };
      if (M >= kUnpackRows) {
        // unpack this chunk's codes once (x's permuted order, zero past K), then sweep all rows
        uint8_t* cb = codebuf.data();
        const __m256i m3 = _mm256_set1_epi8(3);
        for (int64_t i = 0; i < nc; ++i) {
          uint8_t* dst = cb + i * Kp;
          for (int64_t b = 0; b < nwhole; ++b) {
            const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                b < nfull ? wrow[i] + b * kBlockBytes : trow[i]));
            for (int s = 0; s < 4; ++s)
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + b * kBlock + s * 32),
                                  _mm256_and_si256(_mm256_srli_epi16(p, 2 * s), m3));
          }
          if (half_tail) {  // 16-byte slices, as the activations: [s0 | s1], [s2 | s3]
            const __m256i p = _mm256_broadcastsi128_si256(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(trow[i])));
            const __m256i sh01 = _mm256_setr_epi64x(0, 0, 2, 2), sh23 = _mm256_setr_epi64x(4, 4, 6, 6);
            uint8_t* d = dst + nfull * kBlock;
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(d),
                                _mm256_and_si256(_mm256_srlv_epi64(p, sh01), m3));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 32),
                                _mm256_and_si256(_mm256_srlv_epi64(p, sh23), m3));
          }
        }
        for (int64_t m0 = 0; m0 < M; m0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, M - m0));
          const int8_t* xm = X + m0 * Kp;
          int64_t i = 0;
          for (; i + 4 <= nc; i += 4) {
            tile_u_m<4>(mr, cb + i * Kp, Klen, xm, Kp, acc);
            emit(acc, m0, mr, i, 4);
          }
          for (; i < nc; ++i) {
            tile_u_m<1>(mr, cb + i * Kp, Klen, xm, Kp, acc);
            emit(acc, m0, mr, i, 1);
          }
        }
        continue;
      }
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int mr = static_cast<int>(std::min<int64_t>(4, M - m0));
        const int8_t* xm = X + m0 * Kp;
        int64_t i = 0;
        if (mr <= 2) {
          for (; i + 4 <= nc; i += 4) {
            tile_m<4>(mr, &wrow[i], &trow[i], nfull, tail_bytes, xm, Kp, acc);
            emit(acc, m0, mr, i, 4);
          }
        }
        for (; i + 2 <= nc; i += 2) {
          tile_m<2>(mr, &wrow[i], &trow[i], nfull, tail_bytes, xm, Kp, acc);
          emit(acc, m0, mr, i, 2);
        }
        for (; i < nc; ++i) {
          tile_m<1>(mr, &wrow[i], &trow[i], nfull, tail_bytes, xm, Kp, acc);
          emit(acc, m0, mr, i, 1);
        }
      }
    }
  });
  return out;
}

// x: (M, K) fp32 contiguous -> the int8 inputs of ternary_gemm, quantised exactly as
// vljepa.kernels.bitlinear.quantize_activations does (s = 127 / max(max|x|, 1e-5) in float32,
// computed as torch does it, (1 / max(max|x|, 1e-5)) * 127,
// q = clamp(round_half_even(x * s), -128, 127)), permuted per 128-block, zero past K.
// Into xq (M, Kp) int8 (any contents), xsum (M,) int32, xscale (M,) fp32.
void quantize_into(torch::Tensor x, torch::Tensor xq, torch::Tensor xsum, torch::Tensor xscale) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(), "x");
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t Kp = (K + kBlock - 1) / kBlock * kBlock;
  // first input of a short last block (K % 128 in 1..64), laid out in 16-byte slices
  const int64_t tail0 = (K % kBlock != 0 && K % kBlock <= 64) ? K / kBlock * kBlock : K;
  const float* X = x.data_ptr<float>();
  int8_t* Q = xq.data_ptr<int8_t>();
  int32_t* S = xsum.data_ptr<int32_t>();
  float* F = xscale.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 lo = _mm256_set1_ps(-128.f), hi = _mm256_set1_ps(127.f);
  const __m256i to_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  // within each 128-bit lane: 4 dwords (groups j) x 4 bytes (t) -> t-major
  const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xr = X + m * K;
      __m256 vmax = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + k)));
      float buf[8];
      _mm256_storeu_ps(buf, vmax);
      float amax = 0.f;
      for (int i = 0; i < 8; ++i) amax = std::max(amax, buf[i]);
      for (; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
      // torch evaluates `127.0 / t` as t.reciprocal() * 127: the same two roundings here
      const float s = (1.0f / std::max(amax, 1e-5f)) * 127.0f;
      const __m256 vs = _mm256_set1_ps(s);
      int8_t* qr = Q + m * Kp;
      if (Kp != K) std::memset(qr + Kp - kBlock, 0, kBlock);  // zero past K
      __m256i vsum = _mm256_setzero_si256();
      auto quant8 = [&](const float* p) {
        __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(p), vs),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // half even
        return _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v)));
      };
      for (k = 0; k + 32 <= K; k += 32) {  // 32 inputs = groups j of 4 (t = 0..3)
        const __m256i a = quant8(xr + k), b = quant8(xr + k + 8), c = quant8(xr + k + 16),
                      d = quant8(xr + k + 24);
        vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
        __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        q = _mm256_permutevar8x32_epi32(q, to_order);       // groups j0..j7 in order
        q = _mm256_shuffle_epi8(q, transpose);              // lane: [t0: j][t1: j][t2][t3]
        q = _mm256_permutevar8x32_epi32(q, to_order);       // 4 qwords: t0 j0..7, t1, t2, t3
        int8_t* dst = qr + (k / kBlock) * kBlock + (k % kBlock) / 4;
        const int64_t slice = k >= tail0 ? 16 : 32;  // a short last block has 16-byte slices
        alignas(32) int64_t w[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(w), q);
        for (int t = 0; t < 4; ++t) std::memcpy(dst + slice * t, &w[t], 8);
      }
      int32_t sum = hsum(vsum);
      for (; k < K; ++k) {  // the last K % 32 inputs
        float v = std::nearbyint(xr[k] * s);  // rounding mode: half to even, as torch
        v = std::min(127.f, std::max(-128.f, v));
        const int8_t q = static_cast<int8_t>(v);
        sum += q;
        const int64_t i = k % kBlock;  // i = 4j + t -> slot 32t + j
        qr[k - i + ((i & 3) << (k >= tail0 ? 4 : 5)) + (i >> 2)] = q;
      }
      S[m] = sum;
      F[m] = 1.0f / s;
    }
  });
}

std::vector<torch::Tensor> quantize_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2, "x");
  const int64_t M = x.size(0), Kp = (x.size(1) + kBlock - 1) / kBlock * kBlock;
  auto xq = torch::empty({M, Kp}, torch::kInt8);
  auto xsum = torch::empty({M}, torch::kInt32);
  auto xscale = torch::empty({M}, torch::kFloat32);
  quantize_into(x, xq, xsum, xscale);
  return {xq, xsum, xscale};
}

// The whole layer: x (..., K) fp32 -> (..., N) fp32; bias (N,) fp32 or None.
torch::Tensor ternary_linear(torch::Tensor x, torch::Tensor packed, int64_t N, int64_t K,
                             torch::Tensor wscale, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.size(-1) == K, "x width");
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  auto x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0), Kp = (K + kBlock - 1) / kBlock * kBlock;
  // The int8 activations live in a per-thread buffer kept between calls: a fresh allocation
  // per layer would cost page faults that, at small sizes, rival the matmul itself.
  thread_local torch::Tensor qbuf, sbuf, fbuf;
  if (!qbuf.defined() || qbuf.numel() < M * Kp) qbuf = torch::empty({M * Kp}, torch::kInt8);
  if (!sbuf.defined() || sbuf.numel() < M) {
    sbuf = torch::empty({M}, torch::kInt32);
    fbuf = torch::empty({M}, torch::kFloat32);
  }
  auto xq = qbuf.narrow(0, 0, M * Kp).view({M, Kp});
  auto xs = sbuf.narrow(0, 0, M), xf = fbuf.narrow(0, 0, M);
  quantize_into(x2, xq, xs, xf);
  auto b = bias.has_value() ? bias->contiguous() : torch::Tensor();
  return ternary_gemm(xq, xs, xf, packed, N, K, wscale, b).view(sizes);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ternary_gemm", &ternary_gemm,
        "int8 x packed 2-bit ternary matmul (AVX2, bitnet.cpp I2_S style)");
  m.def("quantize_rows", &quantize_rows, "per-row absmax int8 quantisation, permuted");
  m.def("ternary_linear", &ternary_linear, "quantize_rows then ternary_gemm");
}
