// The recurrences of G independent GRU layers run in lockstep on CPU, with PyTorch's equations
// (https://pytorch.org/docs/stable/generated/torch.nn.GRU.html) and a zero initial state. Per time
// step: one small GEMM and a few vectorisable loops around ATen's vectorised sigmoid
// (tanh(a) = 2 sigmoid(2a) - 1), instead of the ~10 dispatched element-wise operations (each with
// an autograd node) of nn.GRU's CPU cell; the groups (e.g. the two directions of a bidirectional
// layer) run in parallel threads. The input projections and weight gradients are
// whole-sequence GEMMs done by the caller: ser_modules/models/grouped_gru.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

namespace {

void check_inputs(const at::Tensor& gi, const at::Tensor& w_hh, const at::Tensor& b_hh) {
  TORCH_CHECK(gi.device().is_cpu() && w_hh.device().is_cpu() && b_hh.device().is_cpu(), "grouped GRU: CPU tensors only");
  TORCH_CHECK(gi.dim() == 4, "grouped GRU: gi must be [G, T, B, 3H], got ", gi.sizes());
  TORCH_CHECK(w_hh.dim() == 3 && w_hh.size(0) == gi.size(0) && w_hh.size(1) == 3 * w_hh.size(2),
              "grouped GRU: w_hh must be [G, 3H, H], got ", w_hh.sizes());
  TORCH_CHECK(gi.size(3) == w_hh.size(1), "grouped GRU: gi's last dimension ", gi.size(3), " != 3H = ", w_hh.size(1));
  TORCH_CHECK(b_hh.dim() == 2 && b_hh.size(0) == gi.size(0) && b_hh.size(1) == w_hh.size(1),
              "grouped GRU: b_hh must be [G, 3H], got ", b_hh.sizes());
  TORCH_CHECK(gi.scalar_type() == w_hh.scalar_type() && gi.scalar_type() == b_hh.scalar_type(),
              "grouped GRU: gi, w_hh and b_hh must have one dtype");
}

void check_steps(const std::vector<int64_t>& steps, int64_t G, int64_t T) {
  TORCH_CHECK(static_cast<int64_t>(steps.size()) == G, "grouped GRU: ", steps.size(), " step counts for ", G, " groups");
  for (auto n : steps) TORCH_CHECK(n >= 0 && n <= T, "grouped GRU: a group's step count ", n, " is outside [0, ", T, "]");
}

bool ragged(const std::vector<int64_t>& steps, int64_t T) {
  for (auto n : steps)
    if (n != T) return true;
  return false;
}

}  // namespace

// gi [G, T, B, 3H] (x W_ih^T + b_ih, gate order r, z, n), w_hh [G, 3H, H], b_hh [G, 3H]; group g
// runs steps[g] <= T steps (its later outputs are zero). Returns hs [G, T, B, H] and what the backward pass needs: rz [G, T, B, 2H] (gates r, z),
// n [G, T, B, H] and ghn [G, T, B, H] (W_hn h + b_hn).
std::vector<at::Tensor> forward(at::Tensor gi, at::Tensor w_hh, at::Tensor b_hh, std::vector<int64_t> steps) {
  check_inputs(gi, w_hh, b_hh);
  gi = gi.contiguous();
  auto bias = b_hh.contiguous();
  const int64_t G = gi.size(0), T = gi.size(1), B = gi.size(2), H = w_hh.size(2);
  check_steps(steps, G, T);
  auto hs = ragged(steps, T) ? at::zeros({G, T, B, H}, gi.options()) : at::empty({G, T, B, H}, gi.options());
  auto rz = at::empty({G, T, B, 2 * H}, gi.options());
  auto ns = at::empty({G, T, B, H}, gi.options());
  auto ghn = at::empty({G, T, B, H}, gi.options());
  auto h0 = at::zeros({G, B, H}, gi.options());
  auto wt = w_hh.transpose(1, 2).contiguous();  // [G, H, 3H]
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "grouped_gru_forward", [&] {
    at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        auto gh = at::empty({B, 3 * H}, gi.options());
        const scalar_t* __restrict__ gh_p = gh.data_ptr<scalar_t>();
        auto wt_g = wt.select(0, g);
        auto hs_g = hs.select(0, g), rz_g = rz.select(0, g), n_g = ns.select(0, g);
        const scalar_t* __restrict__ b_p = bias.data_ptr<scalar_t>() + g * 3 * H;
        const scalar_t* __restrict__ gi_p = gi.data_ptr<scalar_t>() + g * T * B * 3 * H;
        const scalar_t* __restrict__ h0_p = h0.data_ptr<scalar_t>() + g * B * H;
        scalar_t* __restrict__ hs_p = hs.data_ptr<scalar_t>() + g * T * B * H;
        scalar_t* __restrict__ rz_p = rz.data_ptr<scalar_t>() + g * T * B * 2 * H;
        scalar_t* __restrict__ n_p = ns.data_ptr<scalar_t>() + g * T * B * H;
        scalar_t* __restrict__ ghn_p = ghn.data_ptr<scalar_t>() + g * T * B * H;
        for (int64_t t = 0; t < steps[g]; ++t) {
          at::mm_out(gh, t == 0 ? h0.select(0, g) : hs_g.select(0, t - 1), wt_g);
          const scalar_t* __restrict__ hp = t == 0 ? h0_p : hs_p + (t - 1) * B * H;
          const scalar_t* __restrict__ x = gi_p + t * B * 3 * H;
          scalar_t* __restrict__ h = hs_p + t * B * H;
          scalar_t* __restrict__ rzt = rz_p + t * B * 2 * H;
          scalar_t* __restrict__ nt = n_p + t * B * H;
          scalar_t* __restrict__ ghnt = ghn_p + t * B * H;
          for (int64_t b = 0; b < B; ++b) {
            for (int64_t j = 0; j < 2 * H; ++j) rzt[b * 2 * H + j] = x[b * 3 * H + j] + gh_p[b * 3 * H + j] + b_p[j];
            for (int64_t j = 0; j < H; ++j) ghnt[b * H + j] = gh_p[b * 3 * H + 2 * H + j] + b_p[2 * H + j];
          }
          rz_g.select(0, t).sigmoid_();
          for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < H; ++j)
              nt[b * H + j] = scalar_t(2) * (x[b * 3 * H + 2 * H + j] + rzt[b * 2 * H + j] * ghnt[b * H + j]);
          n_g.select(0, t).sigmoid_();
          for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < H; ++j) {
              const int64_t i = b * H + j;
              const scalar_t n = scalar_t(2) * nt[i] - scalar_t(1);
              nt[i] = n;
              h[i] = n + rzt[b * 2 * H + H + j] * (hp[i] - n);
            }
        }
      }
    });
  });
  return {hs, rz, ns, ghn};
}

// dhs [G, T, B, H]: the loss's gradient w.r.t. every output; w_hh and the forward's saved tensors.
// Returns dgi [G, T, B, 3H] (w.r.t. the input projections) and dgh [G, T, B, 3H] (w.r.t. W_hh h + b_hh,
// from which the caller forms W_hh's and b_hh's gradients as one GEMM and one sum over all steps).
std::vector<at::Tensor> backward(at::Tensor dhs, at::Tensor w_hh, at::Tensor hs, at::Tensor rz, at::Tensor ns,
                                 at::Tensor ghn, std::vector<int64_t> steps) {
  dhs = dhs.contiguous();
  const int64_t G = hs.size(0), T = hs.size(1), B = hs.size(2), H = hs.size(3);
  check_steps(steps, G, T);
  const bool pad = ragged(steps, T);  // the steps a group skips get zero gradients
  auto dgi = pad ? at::zeros({G, T, B, 3 * H}, hs.options()) : at::empty({G, T, B, 3 * H}, hs.options());
  auto dgh = pad ? at::zeros({G, T, B, 3 * H}, hs.options()) : at::empty({G, T, B, 3 * H}, hs.options());
  auto w = w_hh.contiguous();
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "grouped_gru_backward", [&] {
    at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        // dL/dh_{t-1} = direct (through h_t = n + z (h_{t-1} - n)) + through_gates (dgh_t W_hh)
        auto direct = at::zeros({B, H}, hs.options());
        auto through_gates = at::zeros({B, H}, hs.options());
        auto w_g = w.select(0, g);
        auto dgh_g = dgh.select(0, g);
        const scalar_t* __restrict__ dhs_p = dhs.data_ptr<scalar_t>() + g * T * B * H;
        const scalar_t* __restrict__ hs_p = hs.data_ptr<scalar_t>() + g * T * B * H;
        const scalar_t* __restrict__ rz_p = rz.data_ptr<scalar_t>() + g * T * B * 2 * H;
        const scalar_t* __restrict__ n_p = ns.data_ptr<scalar_t>() + g * T * B * H;
        const scalar_t* __restrict__ ghn_p = ghn.data_ptr<scalar_t>() + g * T * B * H;
        scalar_t* __restrict__ dgi_p = dgi.data_ptr<scalar_t>() + g * T * B * 3 * H;
        scalar_t* __restrict__ dgh_p = dgh.data_ptr<scalar_t>() + g * T * B * 3 * H;
        scalar_t* __restrict__ direct_p = direct.data_ptr<scalar_t>();
        const scalar_t* __restrict__ gates_p = through_gates.data_ptr<scalar_t>();
        for (int64_t t = steps[g] - 1; t >= 0; --t) {
          for (int64_t b = 0; b < B; ++b) {
            for (int64_t j = 0; j < H; ++j) {
              const int64_t i = b * H + j, base = (t * B + b) * 3 * H;
              const scalar_t d = direct_p[i] + gates_p[i] + dhs_p[t * B * H + i];
              const scalar_t r = rz_p[(t * B + b) * 2 * H + j];
              const scalar_t z = rz_p[(t * B + b) * 2 * H + H + j];
              const scalar_t n = n_p[t * B * H + i];
              const scalar_t hp = t == 0 ? scalar_t(0) : hs_p[(t - 1) * B * H + i];
              const scalar_t dn = d * (scalar_t(1) - z) * (scalar_t(1) - n * n);
              const scalar_t dr = dn * ghn_p[t * B * H + i] * r * (scalar_t(1) - r);
              const scalar_t dz = d * (hp - n) * z * (scalar_t(1) - z);
              dgi_p[base + j] = dr;
              dgi_p[base + H + j] = dz;
              dgi_p[base + 2 * H + j] = dn;
              dgh_p[base + j] = dr;
              dgh_p[base + H + j] = dz;
              dgh_p[base + 2 * H + j] = dn * r;
              direct_p[i] = d * z;
            }
          }
          if (t > 0) at::mm_out(through_gates, dgh_g.select(0, t), w_g);
        }
      }
    });
  });
  return {dgi, dgh};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "grouped GRU recurrence, forward");
  m.def("backward", &backward, "grouped GRU recurrence, backward");
}
