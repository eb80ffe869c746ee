# negsamp host execution layer (-DNS_CUDA_HOST=ON): kernels/*.cu rewritten by rewrite.py into
# C++ and compiled by the host compiler against the runtime in this folder. Test support only:
# the resulting library is a test build and is never installed.
find_package(Python3 REQUIRED COMPONENTS Interpreter)
set(NS_CUDA_HOST_DIR ${CMAKE_CURRENT_LIST_DIR})
set(NS_CUDA_HOST_RUNTIME ${NS_CUDA_HOST_DIR}/runtime.cpp ${NS_CUDA_HOST_DIR}/cublas.cpp)
set(NS_CUDA_HOST_GEN ${CMAKE_BINARY_DIR}/cuda_host_gen)
# What the generated sources are compiled with: the device side of the shared headers
# (__CUDA_ARCH__), no contraction (nvcc -fmad=false).
set(NS_CUDA_HOST_KERNEL_OPTIONS -ffp-contract=off)
set(NS_CUDA_HOST_KERNEL_DEFS __CUDACC__=1 __CUDA_ARCH__=900)

# ns_cuda_host_rewrite(<out var> <gen dir> <.cu/.cuh files>...): one generated file per input
# (x.cu -> x.cu.cpp, x.cuh -> x.cuh, so quoted includes find the rewritten header first).
# A .cu file whose text holds the marker "ns-cuda-host: gpu-only" (inline PTX, wgmma/TMA,
# CUTLASS sm90 kernels) is left out and listed as checked only on a GPU.
function(ns_cuda_host_rewrite out_var gen_dir)
  set(outs)
  set(gpu_only)
  foreach(src ${ARGN})
    get_filename_component(name ${src} NAME)
    get_filename_component(ext ${src} LAST_EXT)
    file(STRINGS ${src} marker REGEX "ns-cuda-host: gpu-only")
    if(marker)
      list(APPEND gpu_only ${name})
      continue()
    endif()
    if(ext STREQUAL ".cu")
      set(out ${gen_dir}/${name}.cpp)
    else()
      set(out ${gen_dir}/${name})
    endif()
    add_custom_command(OUTPUT ${out}
      COMMAND ${Python3_EXECUTABLE} ${NS_CUDA_HOST_DIR}/rewrite.py ${src} ${out}
      DEPENDS ${src} ${NS_CUDA_HOST_DIR}/rewrite.py VERBATIM)
    if(ext STREQUAL ".cu")
      set_source_files_properties(${out} PROPERTIES
        COMPILE_OPTIONS "${NS_CUDA_HOST_KERNEL_OPTIONS}"
        COMPILE_DEFINITIONS "${NS_CUDA_HOST_KERNEL_DEFS}")
    endif()
    list(APPEND outs ${out})
  endforeach()
  if(gpu_only)
    message(STATUS "negsamp host layer: checked only on a GPU (not run by the layer): ${gpu_only}")
  else()
    message(STATUS "negsamp host layer: every kernel source runs on the layer (checked only on a GPU: none)")
  endif()
  set(${out_var} ${outs} PARENT_SCOPE)
endfunction()
