/* hedgespec-kernels-bench: times the library's kernels on chosen shapes, the target for ncu / nsys.
 *
 *   hedgespec-kernels-bench --mode tv --n 8 --m 8 --v 128256 [--dtype bf16] [--iters 200] [--top-l 4]
 *   hedgespec-kernels-bench --learner normalhedge --n 8 --width 12 --draft-len 5
 *   ncu --set full ./hedgespec-kernels-bench --mode tv --n 8 --m 8 --v 128256
 *
 * Inputs are random, allocated on the device; every launch sits in an NVTX range ("hs_acceptance_probs",
 * "hs_hedge_update") when the CUDA toolkit's header-only NVTX 3 was found at build time. Prints microseconds per
 * launch (CUDA events around --iters launches, after --warmup) and, for γ, GB/s against the HBM floor: every input
 * byte read once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "hedgespec_kernels.h"

#ifdef HS_WITH_NVTX
#include <nvtx3/nvToolsExt.h>
#define RANGE_PUSH(name) nvtxRangePushA(name)
#define RANGE_POP() nvtxRangePop()
#else
#define RANGE_PUSH(name) ((void)0)
#define RANGE_POP() ((void)0)
#endif

static const char *arg(int argc, char **argv, const char *name, const char *fallback) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
}

static int check(hs_status status, const char *what) {
    if (status == HS_OK) return 0;
    fprintf(stderr, "%s: status %d: %s\n", what, (int)status, hs_last_error());
    return 1;
}

/* Records ``stop`` after the queued launches, waits for it, and returns the milliseconds since ``start``. */
static float stop_ms(const hs_cuda_api *cu, CUevent start, CUevent stop) {
    cu->EventRecord(stop, NULL);
    cu->EventSynchronize(stop);
    float ms = 0;
    cu->EventElapsedTime(&ms, start, stop);
    return ms;
}

static CUdeviceptr device_random(const hs_cuda_api *cu, size_t bytes, unsigned seed) {
    unsigned char *host = malloc(bytes);
    unsigned state = seed * 2654435761u + 1;
    for (size_t i = 0; i < bytes; i += 2) {  /* 16-bit words near 0: finite in every dtype (bf16 / fp16 / fp32) */
        state = state * 1664525u + 1013904223u;
        unsigned short word = (unsigned short)(0x3c00 + (state >> 24) % 0x0400);
        if (state & 0x10000) word |= 0x8000;
        memcpy(host + i, &word, i + 1 < bytes ? 2 : 1);
    }
    CUdeviceptr ptr = 0;
    cu->MemAlloc(&ptr, bytes);
    cu->MemcpyHtoD(ptr, host, bytes);
    free(host);
    return ptr;
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: %s [--mode tv|greedy|topl] [--top-l L] [--dtype fp32|fp16|bf16] [--n N] [--m M] [--v V]\n"
               "       [--learner hedge|normalhedge|adanormalhedge --width S --draft-len K] [--iters I] "
               "[--warmup W] [--hbm-gbps B]\n%s\n", argv[0], hs_build_info());
        return 0;
    }
    const char *why = NULL;
    const hs_cuda_api *cu = hs_cuda(&why);
    if (cu == NULL) {
        fprintf(stderr, "%s\n", why);
        return 3;
    }
    int n = atoi(arg(argc, argv, "--n", "8")), iters = atoi(arg(argc, argv, "--iters", "200"));
    int warmup = atoi(arg(argc, argv, "--warmup", "20"));
    const char *learner = arg(argc, argv, "--learner", NULL);
    CUevent start, stop;
    CUdevice device;
    CUcontext context;
    cu->DeviceGet(&device, 0);
    cu->DevicePrimaryCtxRetain(&context, device);
    cu->CtxSetCurrent(context);
    cu->EventCreate(&start, 0);
    cu->EventCreate(&stop, 0);
    printf("%s\n", hs_build_info());

    if (learner != NULL) {  /* the learner update alone */
        hs_algo algo = strcmp(learner, "hedge") == 0 ? HS_HEDGE : strcmp(learner, "adanormalhedge") == 0
                                                                      ? HS_ADANORMALHEDGE : HS_NORMALHEDGE;
        int width = atoi(arg(argc, argv, "--width", "12")), k = atoi(arg(argc, argv, "--draft-len", "5"));
        CUdeviceptr gamma = 0, state = 0, step = 0, choice = 0;
        cu->MemAlloc(&gamma, (size_t)n * width * 4);
        cu->MemsetD8(gamma, 0x3f, (size_t)n * width * 4);  /* 0x3f3f3f3f ≈ 0.75 */
        cu->MemAlloc(&state, (size_t)4 * n * 4);
        cu->MemsetD8(state, 0, (size_t)4 * n * 4);
        cu->MemAlloc(&step, 8);
        cu->MemsetD8(step, 0, 8);
        cu->MemAlloc(&choice, 8);
        float *s = (float *)state;
        for (int i = 0; i < warmup + iters; i++) {
            if (i == warmup) cu->EventRecord(start, NULL);
            RANGE_PUSH("hs_hedge_update");
            if (check(hs_hedge_update_from_gamma((const float *)gamma, n, width, width, 1, k, HS_LOSS_EXPECTED_LENGTH,
                                                 algo, s, s + n, s + 2 * n, s + 3 * n, (int64_t *)step, NULL,
                                                 (int64_t *)choice, NULL), "hs_hedge_update_from_gamma"))
                return 1;
            RANGE_POP();
        }
        float ms = stop_ms(cu, start, stop);
        printf("learner %s N=%d width=%d K=%d: %.2f us per launch\n", learner, n, width, k, 1e3 * ms / iters);
        return 0;
    }

    const char *mode_name = arg(argc, argv, "--mode", "tv"), *dtype_name = arg(argc, argv, "--dtype", "bf16");
    hs_mode mode = strcmp(mode_name, "greedy") == 0 ? HS_MODE_GREEDY : strcmp(mode_name, "topl") == 0 ? HS_MODE_TOPL
                                                                                                        : HS_MODE_TV;
    hs_dtype dtype = strcmp(dtype_name, "fp32") == 0 ? HS_FP32 : strcmp(dtype_name, "fp16") == 0 ? HS_FP16 : HS_BF16;
    int m = atoi(arg(argc, argv, "--m", "8")), v = atoi(arg(argc, argv, "--v", "128256"));
    int top_l = atoi(arg(argc, argv, "--top-l", "4"));
    size_t element = dtype == HS_FP32 ? 4 : 2, bytes_in = (size_t)(n + 1) * m * v * element;
    CUdeviceptr target = device_random(cu, (size_t)m * v * element, 1);
    CUdeviceptr drafters = device_random(cu, (size_t)n * m * v * element, 2), gamma = 0, workspace = 0;
    cu->MemAlloc(&gamma, (size_t)n * m * 4);
    hs_status status;
    size_t ws_bytes = hs_acceptance_workspace_bytes(n, m, v, mode, top_l, &status);
    if (check(status, "hs_acceptance_workspace_bytes")) return 1;
    cu->MemAlloc(&workspace, ws_bytes);
    cu->MemsetD8(workspace, 0, ws_bytes);
    for (int i = 0; i < warmup + iters; i++) {
        if (i == warmup) cu->EventRecord(start, NULL);
        RANGE_PUSH("hs_acceptance_probs");
        if (check(hs_acceptance_probs((const void *)target, (const void *)drafters, dtype, n, m, v, v, (int64_t)m * v, v,
                                      1.0f, mode, top_l, (float *)gamma, (void *)workspace, ws_bytes, NULL),
                  "hs_acceptance_probs"))
            return 1;
        RANGE_POP();
    }
    float ms = stop_ms(cu, start, stop);
    double us = 1e3 * ms / iters, gbps = bytes_in / (us * 1e3);
    double hbm = atof(arg(argc, argv, "--hbm-gbps", "4800"));  /* H200: 4.8 TB/s */
    printf("acceptance %s %s N=%d m=%d V=%d: %.2f us per launch, %.0f GB/s = %.2fx the %.0f GB/s floor\n",
           mode_name, dtype_name, n, m, v, us, gbps, hbm / gbps, hbm);
    return 0;
}
