# Sources and include paths of the ML code, for firmware/Makefile to include:
#   include ml/ml.mk  ->  ML_SRCS (relative to ML_DIR), ML_INCLUDES; link with -lm (newlib's libm).
ML_DIR ?= $(dir $(lastword $(MAKEFILE_LIST)))
ML_SRCS := $(addprefix $(ML_DIR),fb.c model.c kernels.c train.c rng.c)
ML_HDRS := $(addprefix $(ML_DIR),fb.h ml_internal.h) $(ML_DIR)../include/ml.h
ML_INCLUDES := -I$(ML_DIR) -I$(ML_DIR)../include
