# owl — build, test, demo, bench.
#
#   make                 build build/owl, the CUDA backend object and the test tools
#   make test            install packages, build, run every test; ends "N passed, N failed"
#   make test SANITIZE=1 the same under AddressSanitizer + UndefinedBehaviorSanitizer (build-san/)
#                        (the plain run also builds the tests of code that threads share
#                        under ThreadSanitizer, build-tsan/, and runs them: TSAN_TESTS)
#   make test T=registry only tests whose name contains "registry"
#   make demo            the whole appliance end to end in a throw-away home
#   make bench           benchmarks (they unset OPENBLAS_CORETYPE themselves, and say so)
#   make fuzz            libFuzzer targets for the parsers of untrusted input (build-fuzz/)
#
# Sources are found by wildcard: a new .c file in a module folder is built
# without touching this file. Each test tests/unit/test_*.c becomes its own
# binary; each folder tests/tools/NAME/ becomes the tool build/NAME.

# Every build uses all the cores (the recursive builds of test, demo and
# bench too): a serial build took a fifth of CI's time.
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)

SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(SANITIZE),thread)
BUILD ?= build-tsan
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
BUILD ?= build
SANFLAGS :=
endif

CC      ?= gcc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
PKGS    := sqlite3 libcurl openssl libarchive jansson libpcre2-8 libmicrohttpd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu17 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-format-truncation -fopenmp -march=x86-64-v3 \
           -MMD -MP -I. -I/usr/include/x86_64-linux-gnu/openblas-pthread $(PKG_CFLAGS) $(SANFLAGS) \
           -DOWL_CUDA_LIB='"libowl_cuda.so"'
LDFLAGS += -fopenmp $(SANFLAGS) -rdynamic
LDLIBS  += $(PKG_LIBS) -lopenblas -lzstd -ldl -lpthread -lm

MODULES := common registry licenses engine engine/kernels engine/kernels/cpu train deploy
LIB_SRC := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CMD_SRC := $(wildcard cmd/*.c)
CMD_OBJ := $(CMD_SRC:%.c=$(BUILD)/obj/%.o)
CU_SRC  := $(wildcard engine/kernels/cuda/*.cu)
TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_COMMON := $(filter-out $(TEST_SRC),$(wildcard tests/unit/*.c))
TEST_COMMON_OBJ := $(TEST_COMMON:%.c=$(BUILD)/obj/%.o)
TOOLS   := $(notdir $(patsubst %/,%,$(dir $(wildcard tests/tools/*/*.c))))
TOOL_BIN := $(addprefix $(BUILD)/,$(sort $(TOOLS)))

# MPI (OpenMPI's libopenmpi-dev): only the object libowl_mpi.so links it.
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null)
MPI_SO     := $(if $(MPI_LIBS),$(BUILD)/libowl_mpi.so)

all: $(BUILD)/owl $(BUILD)/libowl_cuda.so $(BUILD)/libowl_cuda_emu.so $(MPI_SO) $(TOOL_BIN) $(TEST_BIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libowl.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/owl: $(CMD_OBJ) $(BUILD)/libowl.a
	$(CC) $(LDFLAGS) -o $@ $(CMD_OBJ) $(BUILD)/libowl.a $(LDLIBS)

# The CUDA backend is a separate shared object loaded with dlopen at run time,
# so that owl runs on machines without a GPU. It is always compiled and linked:
# each .cu file to its own object (an op's change rebuilds one file), for
# sm_90 (H100/H200) with its PTX so that newer devices JIT it.
CU_ARCH ?= -gencode arch=compute_90,code=[sm_90,compute_90]
NVFLAGS := -O2 -std=c++17 -Xcompiler -fPIC,-Wall,-fvisibility=hidden -I. $(CU_ARCH)
# The objects carry no sanitizer, so every build variant shares build/'s
# (the sanitizer run links them again instead of compiling them again).
CU_OBJ  := $(CU_SRC:%.cu=build/obj/%.o)
build/obj/%.o: %.cu $(wildcard engine/kernels/cuda/*.cuh) engine/kernels/kernels.h engine/kernels/dtype_table.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/libowl_cuda.so: $(CU_OBJ)
	@mkdir -p $(dir $@)
	$(NVCC) -shared $(CU_ARCH) -o $@ $(CU_OBJ) \
	    -L$(CUDA_HOME)/lib64 -Xlinker -rpath=$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lnccl

# The MPI side of engine/dist.c, loaded with dlopen only when a launch is
# MPI, so that owl runs (and its tests run) where no MPI library is installed.
$(BUILD)/libowl_mpi.so: engine/dist/mpi.c engine/dist_impl.h
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -std=gnu17 -Wall -Wextra -Werror -shared -fPIC -I. $(MPI_CFLAGS) -o $@ $< $(MPI_LIBS)

# The same kernel sources built with g++ against a host emulator of CUDA's
# blocks, warps, shared memory, runtime and cuBLAS (tests/cuda-emu/): the op
# tests run on it on every machine (tests/run.sh: test_cuda_emu), under ASan
# too. Not emulated: nccl.cu.
EMU_CU  := $(filter-out engine/kernels/cuda/nccl.cu,$(CU_SRC))
$(BUILD)/libowl_cuda_emu.so: $(EMU_CU) $(wildcard engine/kernels/cuda/*.cuh tests/cuda-emu/*) \
		engine/kernels/kernels.h engine/kernels/dtype_table.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O1 -g -fPIC -shared -pthread -Wall -Wno-attributes -Wno-unknown-pragmas \
	    -DOWL_CUDA_EMU -I. -I$(CUDA_HOME)/include $(SANFLAGS) -Wl,--no-undefined \
	    -o $@ -x c++ $(EMU_CU) tests/cuda-emu/emu.cpp

# The GPU checks' programs keep only the libraries they use, so that they
# can be carried to a GPU machine whose image lacks owl's other dependencies
# (scripts/gpu-check.sh --prepare).
$(BUILD)/tests/test_cuda_ops $(BUILD)/owl-cuda-bench: LDFLAGS += -Wl,--as-needed

$(BUILD)/tests/%: tests/unit/%.c $(TEST_COMMON_OBJ) $(BUILD)/libowl.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(TEST_COMMON_OBJ) $(BUILD)/libowl.a $(LDLIBS)

.SECONDEXPANSION:
$(TOOL_BIN): $(BUILD)/%: $$(wildcard tests/tools/%/*.c) $$(wildcard tests/tools/%/*.h) $(BUILD)/libowl.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(filter %.c,$^) $(BUILD)/libowl.a $(LDLIBS)

bootstrap:
	@scripts/bootstrap.sh

# Unit tests of state that threads share, run again under ThreadSanitizer.
TSAN_TESTS := test_generate test_deploy test_serve

test: bootstrap
	@$(MAKE) --no-print-directory all
	@if [ "$(SANITIZE)" = 0 ]; then $(MAKE) --no-print-directory SANITIZE=thread \
	    $(addprefix build-tsan/tests/,$(TSAN_TESTS)); fi
	@BUILD=$(BUILD) SANITIZE=$(SANITIZE) tests/run.sh $(T)

demo: bootstrap
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/demo.sh

bench: bootstrap
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) scripts/bench.sh $(B)

FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
fuzz: bootstrap
	@mkdir -p build-fuzz
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  echo "clang $$n"; \
	  clang -std=gnu17 -g -O1 -march=x86-64-v3 -fsanitize=fuzzer,address,undefined -fopenmp -I. $(PKG_CFLAGS) -DOWL_CUDA_LIB='"libowl_cuda.so"' \
	    -I/usr/include/x86_64-linux-gnu/openblas-pthread -o build-fuzz/$$n $$f $(LIB_SRC) \
	    $(PKG_LIBS) -lopenblas -lzstd -ldl -lpthread -lm || exit 1; done

clean:
	rm -rf build build-san build-fuzz

.PHONY: all bootstrap test demo bench fuzz clean
-include $(LIB_OBJ:.o=.d) $(CMD_OBJ:.o=.d)
