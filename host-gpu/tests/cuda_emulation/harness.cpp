// Runs the model encoder's CUDA kernels (`host-gpu/src/model/encoder.cu`) on the CPU and checks
// them against plain double-precision references, so their logic is tested on machines without
// a GPU. Driven by `host-gpu/tests/cuda_emulation.rs`, which includes the kernel source with its
// dynamic shared memory declarations rewritten (`encoder_emulated.inc`).
//
// The emulation is `emulator.h`'s. Exits 1 if a kernel is off by more than 1e-5.
#include <random>
#include "emulator.h"
#define HEAD_DIM 32
#include "encoder_emulated.inc"

std::mt19937 rng(7);
std::vector<float> rnd(size_t n) {
    std::normal_distribution<float> d(0, 1);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
static int failures = 0;
// Prints the largest difference between a kernel's output and its reference; fails above 1e-5.
void report(const char* kernel, const std::vector<float>& got, const std::vector<float>& want) {
    double m = 0;
    for (size_t i = 0; i < got.size(); ++i) m = std::max(m, (double)fabs(got[i] - want[i]));
    bool ok = m <= 1e-5;  // NaN fails too
    printf("%-16s max |diff| %.3g %s\n", kernel, m, ok ? "ok" : "FAILED");
    failures += !ok;
}

void ref_layernorm(const float* v, const float* g, const float* b, float* out, int w, float eps) {
    double mean = 0;
    for (int j = 0; j < w; ++j) mean += v[j];
    mean /= w;
    double var = 0;
    for (int j = 0; j < w; ++j) var += (v[j] - mean) * (v[j] - mean);
    var /= w;
    for (int j = 0; j < w; ++j) out[j] = (float)((v[j] - mean) / sqrt(var + eps) * g[j] + b[j]);
}

int main() {
    const int hidden = 384, heads = 12, inter = 1536;
    const float eps = 1e-12f;
    // The launch geometry of `cuda_encoder.rs`: rows of 128 threads with (width + 32) floats of
    // dynamic shared memory, attention tiles of 64 queries, pooling with 32 floats.
    const size_t row_shared = (hidden + 32) * 4;
    std::vector<int> lengths = {1, 5, 64, 65, 130, 3};
    std::vector<int> starts;
    int total = 0;
    for (int n : lengths) {
        starts.push_back(total);
        total += n;
    }
    int S = lengths.size();
    // embed
    int vocab = 50, maxpos = 256;
    auto word = rnd(vocab * hidden), pos = rnd(maxpos * hidden), type = rnd(2 * hidden),
         gamma = rnd(hidden), beta = rnd(hidden);
    std::vector<int> ids(total), positions(total);
    for (int s = 0; s < S; ++s)
        for (int r = 0; r < lengths[s]; ++r) {
            ids[starts[s] + r] = (r * 7 + s) % vocab;
            positions[starts[s] + r] = r;
        }
    std::vector<float> out(total * hidden), want(total * hidden);
    launch({(unsigned)total}, {128}, [&] {
        flint_embed(ids.data(), positions.data(), word.data(), pos.data(), type.data(),
                    gamma.data(), beta.data(), out.data(), hidden, eps);
    }, row_shared);
    for (int r = 0; r < total; ++r) {
        std::vector<float> v(hidden);
        for (int j = 0; j < hidden; ++j)
            v[j] = word[ids[r] * hidden + j] + pos[positions[r] * hidden + j] + type[j];
        ref_layernorm(v.data(), gamma.data(), beta.data(), &want[r * hidden], hidden, eps);
    }
    report("embed", out, want);
    // residual norm
    auto x = rnd(total * hidden), y = rnd(total * hidden), bias = rnd(hidden);
    auto x0 = x;
    launch({(unsigned)total}, {128}, [&] {
        flint_residual_norm(x.data(), y.data(), bias.data(), gamma.data(), beta.data(), hidden,
                            eps);
    }, row_shared);
    for (int r = 0; r < total; ++r) {
        std::vector<float> v(hidden);
        for (int j = 0; j < hidden; ++j) v[j] = x0[r * hidden + j] + y[r * hidden + j] + bias[j];
        ref_layernorm(v.data(), gamma.data(), beta.data(), &want[r * hidden], hidden, eps);
    }
    report("residual_norm", x, want);
    // bias + gelu
    auto z = rnd(total * inter), zb = rnd(inter);
    auto z0 = z;
    launch({7}, {256}, [&] { flint_bias_activation(z.data(), zb.data(), total, inter, 1); }, 0);
    std::vector<float> zw(total * inter);
    for (long i = 0; i < (long)total * inter; ++i) {
        double v = z0[i] + zb[i % inter];
        zw[i] = (float)(0.5 * v * (1 + erf(v / sqrt(2.0))));
    }
    report("bias_gelu", z, zw);
    // attention
    auto qkv = rnd(total * 3 * hidden);
    std::vector<float> ctx(total * hidden, -99), cw(total * hidden);
    float scale = 1.0f / sqrtf(32);
    int longest = *std::max_element(lengths.begin(), lengths.end());
    launch({(unsigned)((longest + 63) / 64), (unsigned)heads, (unsigned)S}, {64}, [&] {
        flint_attention(qkv.data(), starts.data(), lengths.data(), ctx.data(), hidden, scale);
    }, 0);
    for (int s = 0; s < S; ++s)
        for (int h = 0; h < heads; ++h)
            for (int i = 0; i < lengths[s]; ++i) {
                int n = lengths[s];
                std::vector<double> sc(n);
                double m = -1e30;
                for (int k = 0; k < n; ++k) {
                    double d = 0;
                    for (int e = 0; e < 32; ++e)
                        d += (double)qkv[(starts[s] + i) * 3 * hidden + h * 32 + e] *
                             qkv[(starts[s] + k) * 3 * hidden + hidden + h * 32 + e];
                    sc[k] = d * scale;
                    m = std::max(m, sc[k]);
                }
                double sum = 0;
                for (auto& v : sc) {
                    v = exp(v - m);
                    sum += v;
                }
                for (int e = 0; e < 32; ++e) {
                    double acc = 0;
                    for (int k = 0; k < n; ++k)
                        acc += sc[k] / sum *
                               qkv[(starts[s] + k) * 3 * hidden + 2 * hidden + h * 32 + e];
                    cw[(starts[s] + i) * hidden + h * 32 + e] = (float)acc;
                }
            }
    report("attention", ctx, cw);
    // mean pool
    std::vector<float> pooled(S * hidden), pw(S * hidden);
    launch({(unsigned)S}, {128}, [&] {
        flint_mean_pool(x.data(), starts.data(), lengths.data(), pooled.data(), hidden, 1);
    }, 32 * 4);
    for (int s = 0; s < S; ++s) {
        std::vector<double> m(hidden, 0);
        double q = 0;
        for (int r = 0; r < lengths[s]; ++r)
            for (int j = 0; j < hidden; ++j) m[j] += x[(starts[s] + r) * hidden + j];
        for (auto& v : m) {
            v /= lengths[s];
            q += v * v;
        }
        for (int j = 0; j < hidden; ++j) pw[s * hidden + j] = (float)(m[j] / sqrt(q));
    }
    report("mean_pool", pooled, pw);
    return failures ? 1 : 0;
}
