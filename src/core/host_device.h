#pragma once

// Marks functions that both the host compiler and nvcc's device pass compile, so that the CPU backend and a CUDA
// kernel share one definition.
#ifdef __CUDACC__
#define ELEPHANT_HOST_DEVICE __host__ __device__
#else
#define ELEPHANT_HOST_DEVICE
#endif
