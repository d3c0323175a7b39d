// Direct 3x3 convolutions (stride 1 or 2) of NHWC float32 arrays on the CPU, as XLA FFI handlers
// (built and registered by direct_conv.py, which says when they are used and why).
//
// XLA:CPU hands convolutions to Eigen's tensor contractions, which are slow when the channel
// counts are small (16-64: the width-0.25 ResNets; docs/BENCHMARKS.md, "Direct convolution
// kernels"). These kernels keep 16 output channels in one 16-float vector and accumulate in
// registers over the 3 x 3 taps:
// - DirectConvForward: y[n, r, c, :] = sum_{i, j, ci} xpad[n, s*r + i, s*c + j, ci] * k[i, j, ci, :]
//   for a block of output pixels at a time; the input gradient of a stride-1 convolution is
//   this same forward pass of the output gradient with the flipped, transposed kernel.
// - DirectConvKernelGrad: dk[i, j, ci, :] = sum_{n, r, c} xpad[n, s*r + i, s*c + j, ci] *
//   g[n, r, c, :], all 3 taps of a kernel row and a block of input channels per pass over an
//   image.
// Each image is first copied into a zero-padded buffer (so no tap needs a bounds check); the
// images are split over XLA's intra-op thread pool. Output channels must be 16, 32 or 64.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4)));

inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, 64); return v; }
inline void store16(float* p, v16 v) { std::memcpy(p, &v, 64); }
inline v16 splat(float s) { return (v16){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

struct Dims {
  int64_t n, h, w, ci, co, pad_top, pad_left, oh, ow, stride;
  // The zero-padded image the 3 x 3 windows of the oh x ow outputs read.
  int64_t padded_h() const { return (oh - 1) * stride + 3; }
  int64_t padded_w() const { return (ow - 1) * stride + 3; }
};

// The image `src` (h x w x c) into `dst` (ph x pw x c) at offset (top, left), zeros around;
// rows and columns past ph x pw, which no window reads, are dropped.
void pad_image(const float* src, float* dst, int64_t h, int64_t w, int64_t c, int64_t top,
               int64_t left, int64_t ph, int64_t pw) {
  std::memset(dst, 0, sizeof(float) * ph * pw * c);
  for (int64_t r = 0; r < h; ++r) {
    int64_t pr = r + top;
    if (pr < 0 || pr >= ph) continue;
    int64_t c0 = std::max<int64_t>(0, -left), c1 = std::min<int64_t>(w, pw - left);
    if (c1 > c0)
      std::memcpy(dst + (pr * pw + c0 + left) * c, src + (r * w + c0) * c,
                  sizeof(float) * (c1 - c0) * c);
  }
}

// PX output pixels of one row, CV x 16 output channels: y[p] = sum_{kh,kw,i}
// in[kh][stride*p+kw][i] * k[kh][kw][i][:]. CI > 0 fixes the input channels at compile time.
template <int CV, int PX, int CI>
inline void fwd_block(const float* in, int64_t pw, int64_t ci_runtime, int64_t stride,
                      const float* k, int64_t co, float* out, int np) {
  const int64_t ci = CI > 0 ? CI : ci_runtime;
  v16 acc[PX][CV];
  for (int p = 0; p < PX; ++p)
    for (int c = 0; c < CV; ++c) acc[p][c] = v16{};
  for (int kh = 0; kh < 3; ++kh) {
    const float* row = in + kh * pw * ci;
    for (int kw = 0; kw < 3; ++kw) {
      const float* kk = k + (kh * 3 + kw) * ci * co;
      const float* px = row + kw * ci;

      for (int64_t i = 0; i < ci; ++i) {
        v16 wv[CV];
        for (int c = 0; c < CV; ++c) wv[c] = load16(kk + i * co + 16 * c);
        for (int p = 0; p < PX; ++p) {
          v16 b = splat(px[p * stride * ci + i]);
          for (int c = 0; c < CV; ++c) acc[p][c] += b * wv[c];
        }
      }
    }
  }
  for (int p = 0; p < np; ++p)
    for (int c = 0; c < CV; ++c) store16(out + p * co + 16 * c, acc[p][c]);
}

template <int CV, int CI>
void fwd_rows(const float* padded, int64_t pw, float* yn, const float* k, const Dims& d) {
  constexpr int PX = CV == 4 ? 4 : 8;  // PX x CV accumulators (8 or 16) and CV kernel vectors
  for (int64_t r = 0; r < d.oh; ++r) {
    const float* in = padded + r * d.stride * pw * d.ci;
    float* out = yn + r * d.ow * d.co;
    const int64_t step = d.stride * d.ci;  // input floats from one output pixel to the next
    int64_t c = 0;
    for (; c + PX <= d.ow; c += PX)
      fwd_block<CV, PX, CI>(in + c * step, pw, d.ci, d.stride, k, d.co, out + c * d.co, PX);
    // Rows shorter than PX (4x4 maps) or their remainder: 4 pixels at a time, then singly.
    for (; c + 4 <= d.ow; c += 4)
      fwd_block<CV, 4, CI>(in + c * step, pw, d.ci, d.stride, k, d.co, out + c * d.co, 4);
    for (; c < d.ow; ++c)
      fwd_block<CV, 1, CI>(in + c * step, pw, d.ci, d.stride, k, d.co, out + c * d.co, 1);
  }
}

template <int CV>
void fwd_images(const float* x, const float* k, float* y, const Dims& d, int64_t n0,
                int64_t n1) {
  int64_t ph = d.padded_h(), pw = d.padded_w();
  std::vector<float> padded(ph * pw * d.ci);
  for (int64_t n = n0; n < n1; ++n) {
    pad_image(x + n * d.h * d.w * d.ci, padded.data(), d.h, d.w, d.ci, d.pad_top, d.pad_left,
              ph, pw);
    float* yn = y + n * d.oh * d.ow * d.co;
    switch (d.ci) {
      case 3: fwd_rows<CV, 3>(padded.data(), pw, yn, k, d); break;
      case 16: fwd_rows<CV, 16>(padded.data(), pw, yn, k, d); break;
      case 32: fwd_rows<CV, 32>(padded.data(), pw, yn, k, d); break;
      default: fwd_rows<CV, 0>(padded.data(), pw, yn, k, d);
    }
  }
}

// Weight gradient of CB input channels starting at i0, all 3 x 3 taps, CV x 16 output channels,
// over one padded image: dk[kh][kw][i0 + b][:] += sum_{r,c} in[s*r+kh][s*c+kw][i0+b] * g[r][c][:].
template <int CV, int CB>
inline void dw_block(const float* in, int64_t pw, int64_t ci, const float* g, const Dims& d,
                     int64_t i0, int kh, float* dk) {
  v16 acc[3][CB][CV];
  for (int kw = 0; kw < 3; ++kw)
    for (int b = 0; b < CB; ++b)
      for (int c = 0; c < CV; ++c) acc[kw][b][c] = v16{};
  for (int64_t r = 0; r < d.oh; ++r) {
    const float* row = in + (r * d.stride + kh) * pw * ci + i0;
    const float* gr = g + r * d.ow * d.co;
    for (int64_t c = 0; c < d.ow; ++c) {
      v16 gv[CV];
      for (int v = 0; v < CV; ++v) gv[v] = load16(gr + c * d.co + 16 * v);
      for (int kw = 0; kw < 3; ++kw) {
        const float* px = row + (c * d.stride + kw) * ci;
        for (int b = 0; b < CB; ++b) {
          v16 s = splat(px[b]);
          for (int v = 0; v < CV; ++v) acc[kw][b][v] += s * gv[v];
        }
      }
    }
  }
  for (int kw = 0; kw < 3; ++kw)
    for (int b = 0; b < CB; ++b) {
      float* dst = dk + ((kh * 3 + kw) * ci + i0 + b) * d.co;
      for (int v = 0; v < CV; ++v) store16(dst + 16 * v, load16(dst + 16 * v) + acc[kw][b][v]);
    }
}

template <int CV>
void dw_images(const float* x, const float* g, float* dk, const Dims& d, int64_t n0, int64_t n1) {
  constexpr int CB = 8 / CV;  // 3 taps x CB channels x CV accumulators: 24 vector registers
  int64_t ph = d.padded_h(), pw = d.padded_w();
  std::vector<float> padded(ph * pw * d.ci);
  for (int64_t n = n0; n < n1; ++n) {
    pad_image(x + n * d.h * d.w * d.ci, padded.data(), d.h, d.w, d.ci, d.pad_top, d.pad_left,
              ph, pw);
    const float* gn = g + n * d.oh * d.ow * d.co;
    for (int kh = 0; kh < 3; ++kh) {
      int64_t i = 0;
      for (; i + CB <= d.ci; i += CB) dw_block<CV, CB>(padded.data(), pw, d.ci, gn, d, i, kh, dk);
      for (; i < d.ci; ++i) dw_block<CV, 1>(padded.data(), pw, d.ci, gn, d, i, kh, dk);
    }
  }
}

// Runs task(part) for every part in [0, parts) on the calling thread and on XLA's intra-op pool.
// Parts are handed out one at a time from a shared counter, so the caller keeps working when the
// pool's threads are busy with other operations (XLA runs independent ones concurrently) and
// helpers that start late find nothing left. The counters live in a shared_ptr because a helper
// may run after this function has returned; it then touches only them, never `task`.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t parts, int64_t helpers, const F& task) {
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, parts, &task] {
    for (int64_t p; (p = shared->next.fetch_add(1)) < parts;) {
      task(p);
      if (shared->done.fetch_add(1) + 1 == parts) {
        std::lock_guard<std::mutex> lock(shared->mu);
        shared->cv.notify_all();
      }
    }
  };
  for (int64_t h = 0; h < std::min(helpers, parts - 1); ++h) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == parts; });
}

// Images per part: a few parts per thread, so that uneven progress evens out.
int64_t num_parts(ffi::ThreadPool& pool, int64_t n) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(n, 4 * threads));
}

int64_t num_helpers(ffi::ThreadPool& pool) {
  return std::max<int64_t>(0, pool.num_threads() - 1);
}

Dims make_dims(ffi::Buffer<ffi::F32>& x, int64_t co, int64_t oh, int64_t ow, int64_t top,
               int64_t left, int64_t stride) {
  auto xd = x.dimensions();
  return Dims{xd[0], xd[1], xd[2], xd[3], co, top, left, oh, ow, stride};
}

// The shapes the kernels assume; an error names what does not hold.
ffi::Error check(ffi::Buffer<ffi::F32>& x, const Dims& d, int64_t kernel_elements,
                 int64_t out_images) {
  if (x.dimensions().size() != 4) return ffi::Error::InvalidArgument("input must be NHWC");
  if (d.co != 16 && d.co != 32 && d.co != 64)
    return ffi::Error::InvalidArgument("output channels must be 16, 32 or 64");
  if (kernel_elements != 9 * d.ci * d.co)
    return ffi::Error::InvalidArgument("kernel must be 3 x 3 x input x output channels");
  if (out_images != d.n) return ffi::Error::InvalidArgument("batch sizes differ");
  if (d.stride != 1 && d.stride != 2) return ffi::Error::InvalidArgument("stride must be 1 or 2");
  if (d.pad_top < 0 || d.pad_top > 2 || d.pad_left < 0 || d.pad_left > 2 || d.oh < 1 ||
      d.ow < 1 || d.padded_h() - d.pad_top > d.h + 2 || d.padded_w() - d.pad_left > d.w + 2)
    return ffi::Error::InvalidArgument("padding must be 0-2 per side");
  return ffi::Error::Success();
}

// run(std::integral_constant<int, CV>) with CV = co / 16 output vectors, a compile-time count.
template <typename F>
ffi::Error with_vectors(int64_t co, F run) {
  switch (co) {
    case 16: run(std::integral_constant<int, 1>{}); break;
    case 32: run(std::integral_constant<int, 2>{}); break;
    case 64: run(std::integral_constant<int, 4>{}); break;
    default: return ffi::Error::InvalidArgument("output channels must be 16, 32 or 64");
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                       ffi::ResultBuffer<ffi::F32> y, int64_t pad_top, int64_t pad_left,
                       int64_t stride) {
  auto yd = y->dimensions();
  Dims d = make_dims(x, yd[3], yd[1], yd[2], pad_top, pad_left, stride);
  if (ffi::Error e = check(x, d, k.element_count(), yd[0]); e.failure()) return e;
  int64_t parts = num_parts(pool, d.n);
  return with_vectors(d.co, [&](auto cv_tag) {
    constexpr int CV = decltype(cv_tag)::value;
    parallel_for(pool, parts, num_helpers(pool), [&](int64_t p) {
      fwd_images<CV>(x.typed_data(), k.typed_data(), y->typed_data(), d, d.n * p / parts,
                     d.n * (p + 1) / parts);
    });
  });
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> dk, int64_t pad_top, int64_t pad_left,
                          int64_t stride) {
  auto gd = g.dimensions();
  Dims d = make_dims(x, gd[3], gd[1], gd[2], pad_top, pad_left, stride);
  if (ffi::Error e = check(x, d, dk->element_count(), gd[0]); e.failure()) return e;
  int64_t parts = num_parts(pool, d.n);
  int64_t size = 9 * d.ci * d.co;
  std::vector<std::vector<float>> partial(parts, std::vector<float>(size, 0.0f));
  ffi::Error e = with_vectors(d.co, [&](auto cv_tag) {
    constexpr int CV = decltype(cv_tag)::value;
    parallel_for(pool, parts, num_helpers(pool), [&](int64_t p) {
      dw_images<CV>(x.typed_data(), g.typed_data(), partial[p].data(), d, d.n * p / parts,
                    d.n * (p + 1) / parts);
    });
  });
  if (e.failure()) return e;
  float* out = dk->typed_data();
  for (int64_t i = 0; i < size; ++i) {
    float s = 0.0f;
    for (int64_t p = 0; p < parts; ++p) s += partial[p][i];
    out[i] = s;
  }
  return ffi::Error::Success();
}

}  // namespace

// Both handlers take (thread pool; input, kernel or output gradient; result) and the same
// attributes: the forward pass's top and left padding and its stride.
static auto binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_left")
      .Attr<int64_t>("stride");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DirectConvForward, ConvForward, binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DirectConvKernelGrad, ConvKernelGrad, binding());
