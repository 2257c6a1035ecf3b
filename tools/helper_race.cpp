// Every cell's forward and backward on two threads, the calls that hand work to the helper
// thread (cpp/helper.hpp): at batch 1 its share of the products, at batch 8 the second half
// of the batch (threads.hpp parallel_chunks). For ThreadSanitizer: built and run by
// tools/tsan.sh. Each call runs three times and must give the same bits each time (which
// thread ran which chunk or window changes from call to call); TSan reports any data race it
// sees on the way.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "gru.hpp"
#include "lstm.hpp"
#include "rnn.hpp"

namespace {

using rnnfast::Index;

template <typename T>
std::vector<T> random(std::size_t n, std::mt19937& rng, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<T> v(n);
  for (T& e : v) e = T(u(rng));
  return v;
}

// One layer's forward and backward; returns every output, concatenated.
template <typename T>
std::vector<T> step(char cell, Index B, Index T_, const std::int64_t* lengths, bool reverse,
                    std::uint32_t seed) {
  const Index D = 64, H = 64, G = cell == 'l' ? 4 : cell == 'g' ? 3 : 1;
  std::mt19937 rng(seed);
  auto x = random<T>(B * T_ * D, rng, 1.0), h0 = random<T>(B * H, rng, 0.5),
       c0 = random<T>(B * H, rng, 0.5), dy = random<T>(B * T_ * H, rng, 1.0),
       dh_n = random<T>(B * H, rng, 1.0), dc_n = random<T>(B * H, rng, 1.0),
       w_ih = random<T>(G * H * D, rng, 0.2), w_hh = random<T>(G * H * H, rng, 0.2),
       b_ih = random<T>(G * H, rng, 0.1), b_hh = random<T>(G * H, rng, 0.1);
  std::vector<T> y(B * T_ * H), h_n(B * H), c_n(B * H), gates(B * T_ * G * H), c(B * T_ * H),
      a_hn(B * T_ * H), dx(B * T_ * D), dh0(B * H), dc0(B * H), dw_ih(G * H * D),
      dw_hh(G * H * H), db_ih(G * H), db_hh(G * H), ws(6 * B * H);
  const rnnfast::LayerWeights<T> w{rnnfast::ConstMatrixMap<T>(w_ih.data(), G * H, D),
                                   rnnfast::ConstMatrixMap<T>(w_hh.data(), G * H, H),
                                   b_ih.data(), b_hh.data()};
  rnnfast::LayerGrads<T> g{rnnfast::MatrixMap<T>(dw_ih.data(), G * H, D),
                           rnnfast::MatrixMap<T>(dw_hh.data(), G * H, H), db_ih.data(),
                           db_hh.data()};
  const rnnfast::Dims d{B, T_, D, H};
  const rnnfast::StepOptions<T> opt{};
  T* s = ws.data();
  if (cell == 'l') {
    rnnfast::lstm::forward<T>(y.data(), h_n.data(), c_n.data(), gates.data(), c.data(),
                              x.data(), h0.data(), c0.data(), w, lengths, reverse, d);
    rnnfast::lstm::backward<T>(dx.data(), dh0.data(), dc0.data(), g, x.data(), h0.data(),
                               c0.data(), y.data(), gates.data(), c.data(), w, lengths,
                               dy.data(), dh_n.data(), dc_n.data(), opt, reverse,
                               {s, s + B * H, s + 2 * B * H, s + 3 * B * H}, d);
  } else if (cell == 'g') {
    rnnfast::gru::forward<T>(y.data(), h_n.data(), gates.data(), a_hn.data(), x.data(),
                             h0.data(), w, lengths, reverse, {s}, d);
    rnnfast::gru::backward<T>(dx.data(), dh0.data(), g, x.data(), h0.data(), y.data(),
                              gates.data(), a_hn.data(), w, lengths, dy.data(), dh_n.data(),
                              opt, reverse, {s, s + 3 * B * H, s + 4 * B * H, s + 5 * B * H},
                              d);
  } else {
    const auto f = rnnfast::rnn::Activation::Tanh;
    rnnfast::rnn::forward<T>(y.data(), h_n.data(), x.data(), h0.data(), w, lengths, f, reverse,
                             d);
    rnnfast::rnn::backward<T>(dx.data(), dh0.data(), g, x.data(), h0.data(), y.data(), w,
                              lengths, f, dy.data(), dh_n.data(), opt, reverse, {s}, d);
  }
  std::vector<T> out;
  for (const auto* v : {&y, &h_n, &c_n, &dx, &dh0, &dc0, &dw_ih, &dw_hh, &db_ih, &db_hh})
    out.insert(out.end(), v->begin(), v->end());
  return out;
}

template <typename T>
int check(const char* type) {
  int failures = 0;
  for (char cell : {'r', 'l', 'g'}) {
    for (Index B : {Index(1), Index(8)}) {
      for (Index T_ : {Index(100), Index(37)}) {
        for (bool short_sequences : {false, true})
        for (bool reverse : {false, true}) {
          std::vector<std::int64_t> length(B);  // every other sequence 20 steps short
          for (Index b = 0; b < B; ++b) length[b] = b % 2 == 0 ? T_ - 20 : T_;
          const std::int64_t* lengths = short_sequences ? length.data() : nullptr;
          const auto first = step<T>(cell, B, T_, lengths, reverse, 7);
          for (int again = 0; again < 2; ++again) {
            if (step<T>(cell, B, T_, lengths, reverse, 7) != first) {
              std::printf("differs: cell %c, %s, B %ld, T %ld, lengths %d, reverse %d\n", cell,
                          type, long(B), long(T_), int(short_sequences), int(reverse));
              ++failures;
            }
          }
        }
      }
    }
  }
  return failures;
}

}  // namespace

int main() {
  rnnfast::num_threads().store(2);
  const int failures = check<float>("float") + check<double>("double");
  std::printf(failures == 0 ? "helper_race: every call repeated bit for bit\n"
                            : "helper_race: %d calls differed\n",
              failures);
  return failures == 0 ? 0 : 1;
}
