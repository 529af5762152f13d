// tokmix quick start: causal grouped-query attention over Eigen tensors.
#include <cmath>
#include <cstdio>
#include "tokmix/attention.hpp"

int main() {
  const int L = 5, Hq = 4, Hkv = 2, D = 8;  // 2 query heads share each kv head
  Eigen::Tensor<float, 4, Eigen::RowMajor> q(1, L, Hq, D), k(1, L, Hkv, D), v(1, L, Hkv, D), o(1, L, Hq, D);
  q.setRandom(), k.setRandom(), v.setRandom();  // [batch, seq, heads, head_dim]

  tokmix::attention_params p;
  p.causal = true;
  tokmix::flash_attention(q, k, v, o, p);
  std::printf("o: [%ld, %ld, %ld, %ld], o[0, 4, 3, :3] = %.4f %.4f %.4f\n", o.dimension(0), o.dimension(1),
              o.dimension(2), o.dimension(3), o(0, 4, 3, 0), o(0, 4, 3, 1), o(0, 4, 3, 2));

  double max_diff = 0;  // against a naive loop: softmax_j<=i(q_i . k_j / sqrt(D)) v_j
  for (int i = 0; i < L; ++i)
    for (int h = 0; h < Hq; ++h) {
      double w[L] = {}, sum = 0;
      for (int j = 0; j <= i; ++j) {
        for (int d = 0; d < D; ++d) w[j] += q(0, i, h, d) * k(0, j, h / 2, d) / std::sqrt(double(D));
        sum += w[j] = std::exp(w[j]);
      }
      for (int d = 0; d < D; ++d) {
        double ref = 0;
        for (int j = 0; j <= i; ++j) ref += w[j] / sum * v(0, j, h / 2, d);
        max_diff = std::max(max_diff, std::abs(ref - o(0, i, h, d)));
      }
    }
  std::printf("max |o - naive| = %.1e\n", max_diff);
  return max_diff < 1e-5 ? 0 : 1;
}
