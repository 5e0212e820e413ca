// Fused FDM gather-and-multiply over a bit-packed mask dictionary (layout: kernels/fdm_pack.py).
//
//   out[n, e] = features[n, e] * AND_{j : bit j of occlusion[n]} bit e of dictionary row j
//
// with all bits kept when no cell is occluded. Reference: kernels/fdm_reference.py.
//
// One thread per feature element, grid-stride. Feature traffic (4 or 2 bytes in, the same out,
// per element) dominates, and consecutive threads touch consecutive elements, so loads and stores
// coalesce. The 32 threads of a warp share one dictionary word per occluded cell and one occlusion
// word, which the hardware broadcasts; the packed dictionary (67 KB for 21504 elements) stays in
// L2. One thread per word would instead stride each thread across 32 features and break
// coalescing. Each thread reads its element before writing it, so ``out`` may be ``features``.
//
// The file includes no header, so NVRTC compiles it without a CUDA toolkit on the include path.
// Half features are handled as their IEEE bits: multiplying by 1 leaves x unchanged and
// multiplying by 0 gives a zero of x's sign, or NaN for an infinite or NaN x.

namespace {

__device__ __forceinline__ float apply_keep(float x, unsigned int keep) {
    return x * static_cast<float>(keep);
}

__device__ __forceinline__ unsigned short apply_keep(unsigned short x, unsigned int keep) {
    if (keep) {
        return x;
    }
    const bool not_finite = (x & 0x7C00u) == 0x7C00u;
    return not_finite ? static_cast<unsigned short>(0x7FFFu) : static_cast<unsigned short>(x & 0x8000u);
}

template <typename T>
__device__ void fdm_gather_mul(const T* features,
                               const unsigned int* __restrict__ occlusion,
                               const unsigned int* __restrict__ packed_dictionary,
                               T* out,
                               int batch, int elements, int words_per_row, int cells) {
    const unsigned int cell_mask = cells >= 32 ? 0xFFFFFFFFu : ((1u << cells) - 1u);
    const long long total = static_cast<long long>(batch) * elements;
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int image = static_cast<int>(i / elements);
        const int element = static_cast<int>(i - static_cast<long long>(image) * elements);
        const int word = element >> 5;
        unsigned int occluded = occlusion[image] & cell_mask;
        unsigned int kept = 0xFFFFFFFFu;
        while (occluded) {
            const int cell = __ffs(occluded) - 1;
            occluded &= occluded - 1u;
            kept &= packed_dictionary[static_cast<long long>(cell) * words_per_row + word];
        }
        out[i] = apply_keep(features[i], (kept >> (element & 31)) & 1u);
    }
}

}  // namespace

// Entry points take tensor inputs, then scalars, then the output: the argument order TensorRT's
// ahead-of-time plugins launch a kernel with (kernels/fdm_plugin.py).
extern "C" __global__ void fdm_gather_mul_f32(const float* features, const unsigned int* occlusion,
                                              const unsigned int* packed_dictionary,
                                              int batch, int elements, int words_per_row, int cells,
                                              float* out) {
    fdm_gather_mul(features, occlusion, packed_dictionary, out, batch, elements, words_per_row, cells);
}

extern "C" __global__ void fdm_gather_mul_f16(const unsigned short* features, const unsigned int* occlusion,
                                              const unsigned int* packed_dictionary,
                                              int batch, int elements, int words_per_row, int cells,
                                              unsigned short* out) {
    fdm_gather_mul(features, occlusion, packed_dictionary, out, batch, elements, words_per_row, cells);
}
