// Kernels of the BERT encoder on CUDA (see `cuda_encoder.rs`); the matrix products are cuBLAS.
//
// Same layout and math as the CPU path (`forward.rs`): sequences are packed one after another
// without padding (token rows `starts[s] .. starts[s] + lengths[s]`), so a text's embedding does
// not depend on the batch it is in. `HEAD_DIM` is defined by the host when it compiles this
// source for a model (the width of one attention head).
//
// Every kernel that works on rows takes one block per row; block sizes are multiples of 32.

#ifndef HEAD_DIM
#error "HEAD_DIM must be defined"
#endif

// Keys and values of this many tokens are staged in shared memory at a time by `flint_attention`,
// which also runs this many threads (one query each) per block.
#define ATTENTION_TILE 64

// Sum of `value` over the block, returned to every thread. `scratch` holds 32 floats.
__device__ float block_sum(float value, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // an earlier call may still be reading `scratch`
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    int warps = (blockDim.x + 31) >> 5;
    value = lane < warps ? scratch[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// LayerNorm of one row held in shared memory (`row`, `width` values, each thread owning columns
// threadIdx.x, threadIdx.x + blockDim.x, ...), whose sum this thread's columns add up to `sum`.
__device__ void layer_norm_row(const float* row, float sum, const float* gamma, const float* beta,
                               float* out, int width, float eps, float* scratch) {
    float mean = block_sum(sum, scratch) / (float)width;
    float squares = 0.0f;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        float d = row[j] - mean;
        squares += d * d;
    }
    float variance = block_sum(squares, scratch) / (float)width;
    float inverse = rsqrtf(variance + eps);
    for (int j = threadIdx.x; j < width; j += blockDim.x)
        out[j] = (row[j] - mean) * inverse * gamma[j] + beta[j];
}

// Embeddings: out[r] = LayerNorm(word[ids[r]] + position[positions[r]] + token_type[0]).
// One block per token row; dynamic shared memory: (hidden + 32) floats.
extern "C" __global__ void flint_embed(const int* ids, const int* positions, const float* word,
                                       const float* position, const float* token_type,
                                       const float* gamma, const float* beta, float* out,
                                       int hidden, float eps) {
    extern __shared__ float shared[];
    float* row = shared;
    float* scratch = shared + hidden;
    long long r = blockIdx.x;
    const float* w = word + (long long)ids[r] * hidden;
    const float* p = position + (long long)positions[r] * hidden;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float v = w[j] + p[j] + token_type[j];
        row[j] = v;
        sum += v;
    }
    layer_norm_row(row, sum, gamma, beta, out + r * hidden, hidden, eps, scratch);
}

// Residual and LayerNorm in place: x[r] = LayerNorm(x[r] + y[r] + bias).
// One block per row; dynamic shared memory: (width + 32) floats.
extern "C" __global__ void flint_residual_norm(float* x, const float* y, const float* bias,
                                               const float* gamma, const float* beta, int width,
                                               float eps) {
    extern __shared__ float shared[];
    float* row = shared;
    float* scratch = shared + width;
    long long offset = (long long)blockIdx.x * width;
    float sum = 0.0f;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        float v = x[offset + j] + y[offset + j] + bias[j];
        row[j] = v;
        sum += v;
    }
    layer_norm_row(row, sum, gamma, beta, x + offset, width, eps, scratch);
}

// y[r][c] += bias[c], then exact GELU when `gelu` is set.
extern "C" __global__ void flint_bias_activation(float* y, const float* bias, long long rows,
                                                 int cols, int gelu) {
    long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = y[i] + bias[i % cols];
        if (gelu) v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        y[i] = v;
    }
}

// Self-attention of one head over one sequence, for the ATTENTION_TILE queries of this block:
// grid (query tiles, heads, sequences), ATTENTION_TILE threads, one query row each.
// `qkv` rows are [Q | K | V] (width 3 * hidden, biases added); `out` has Q's layout (width
// hidden). Keys and values pass through shared memory a tile at a time, and the softmax is
// computed online (running maximum and sum), so any sequence length fits.
extern "C" __global__ void flint_attention(const float* qkv, const int* starts, const int* lengths,
                                           float* out, int hidden, float scale) {
    __shared__ float keys[ATTENTION_TILE][HEAD_DIM];
    __shared__ float values[ATTENTION_TILE][HEAD_DIM];
    int sequence = blockIdx.z, head = blockIdx.y;
    int start = starts[sequence], n = lengths[sequence];
    int first_query = blockIdx.x * ATTENTION_TILE;
    if (first_query >= n) return;  // the whole block: sequences shorter than the grid's longest
    int query = first_query + threadIdx.x;
    bool active = query < n;
    long long width = 3LL * hidden;
    const float* q_row = qkv + (long long)(start + (active ? query : 0)) * width + head * HEAD_DIM;
    float q[HEAD_DIM], acc[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; ++d) {
        q[d] = q_row[d];
        acc[d] = 0.0f;
    }
    float running_max = __int_as_float(0xff800000);  // -inf
    float running_sum = 0.0f;
    for (int key0 = 0; key0 < n; key0 += ATTENTION_TILE) {
        int count = min(ATTENTION_TILE, n - key0);
        __syncthreads();  // the previous tile is no longer read
        for (int e = threadIdx.x; e < count * HEAD_DIM; e += blockDim.x) {
            int k = e / HEAD_DIM, d = e % HEAD_DIM;
            const float* base = qkv + (long long)(start + key0 + k) * width + head * HEAD_DIM + d;
            keys[k][d] = base[hidden];
            values[k][d] = base[2 * hidden];
        }
        __syncthreads();
        if (active) {
            for (int k = 0; k < count; ++k) {
                float score = 0.0f;
                for (int d = 0; d < HEAD_DIM; ++d) score += q[d] * keys[k][d];
                score *= scale;
                float new_max = fmaxf(running_max, score);
                float correction = expf(running_max - new_max);
                float weight = expf(score - new_max);
                running_sum = running_sum * correction + weight;
                for (int d = 0; d < HEAD_DIM; ++d)
                    acc[d] = acc[d] * correction + weight * values[k][d];
                running_max = new_max;
            }
        }
    }
    if (active) {
        float* o = out + (long long)(start + query) * hidden + head * HEAD_DIM;
        float inverse = 1.0f / running_sum;
        for (int d = 0; d < HEAD_DIM; ++d) o[d] = acc[d] * inverse;
    }
}

// Mean of each sequence's token rows, L2-normalized when `normalize` is set.
// One block per sequence; dynamic shared memory: 32 floats.
extern "C" __global__ void flint_mean_pool(const float* x, const int* starts, const int* lengths,
                                           float* out, int hidden, int normalize) {
    extern __shared__ float scratch[];
    int sequence = blockIdx.x;
    int start = starts[sequence], n = lengths[sequence];
    float* o = out + (long long)sequence * hidden;
    float squares = 0.0f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float sum = 0.0f;
        for (int r = 0; r < n; ++r) sum += x[(long long)(start + r) * hidden + j];
        float mean = sum / (float)max(n, 1);
        o[j] = mean;
        squares += mean * mean;
    }
    if (normalize) {
        float norm = fmaxf(sqrtf(block_sum(squares, scratch)), 1e-12f);
        for (int j = threadIdx.x; j < hidden; j += blockDim.x) o[j] /= norm;
    }
}
