// Runs one of the built-in ops' CUDA kernels (`host-gpu/src/cuda/builtins.rs`, included as
// `builtins_emulated.inc`) on the CPU under `emulator.h`, with the launch geometry and inputs
// that `host-gpu/tests/cuda_emulation.rs` gives it, and writes the output buffer to a file. The
// test compares that output with the CPU backend's.
//
//   builtins KERNEL GRID BLOCK SHARED_BYTES OUT_BYTES OUT_FILE INPUT_FILE... PARAMS...
//
//   binary     inputs a b; params n op rank dims[8] strides_a[8] strides_b[8]
//   unary      input a;    params n op factor
//   softmax    input a;    params rows cols
//   reduce     input a;    params outer n inner divisor
//   transpose  input a;    params rows cols size
//
// The output buffer starts filled with 0xff bytes (NaN as f32), so elements a kernel never
// writes show up as mismatches.
#include <fstream>
#include <iterator>
#include <string>
#include "emulator.h"
#include "builtins_emulated.inc"

static std::vector<unsigned char> read_file(const char* path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int main(int argc, char** argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: builtins KERNEL GRID BLOCK SHARED OUT_BYTES OUT INPUT... PARAMS...\n");
        return 1;
    }
    std::string kernel = argv[1];
    dim3 grid{(unsigned)atol(argv[2])}, block{(unsigned)atol(argv[3])};
    size_t shared = atol(argv[4]);
    std::vector<unsigned char> out(atol(argv[5]), 0xff);
    const char* out_path = argv[6];
    auto a = read_file(argv[7]);
    char** p = argv + 8;
    auto next = [&] { return atoll(*p++); };
    auto af = reinterpret_cast<const float*>(a.data());
    auto of = reinterpret_cast<float*>(out.data());
    if (kernel == "binary") {
        auto b = read_file(*p++);
        long long n = next();
        int op = (int)next();
        Broadcast g;
        g.rank = next();
        for (auto& d : g.dims) d = next();
        for (auto& s : g.strides_a) s = next();
        for (auto& s : g.strides_b) s = next();
        auto bf = reinterpret_cast<const float*>(b.data());
        launch(grid, block, [&] { flint_binary(af, bf, of, n, op, g); }, shared, false);
    } else if (kernel == "unary") {
        long long n = next();
        int op = (int)next();
        float factor = strtof(*p++, nullptr);
        launch(grid, block, [&] { flint_unary(af, of, n, op, factor); }, shared, false);
    } else if (kernel == "softmax") {
        long long rows = next(), cols = next();
        launch(grid, block, [&] { flint_softmax(af, of, rows, cols); }, shared, true);
    } else if (kernel == "reduce") {
        long long outer = next(), n = next(), inner = next();
        float divisor = strtof(*p++, nullptr);
        launch(grid, block, [&] { flint_reduce(af, of, outer, n, inner, divisor); }, shared,
               false);
    } else if (kernel == "transpose") {
        long long rows = next(), cols = next();
        int size = (int)next();
        launch(grid, block, [&] { flint_transpose(a.data(), out.data(), rows, cols, size); },
               shared, false);
    } else {
        fprintf(stderr, "unknown kernel %s\n", kernel.c_str());
        return 1;
    }
    std::ofstream(out_path, std::ios::binary)
        .write(reinterpret_cast<const char*>(out.data()), out.size());
    return 0;
}
