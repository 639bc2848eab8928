/* Linked only when firmware/ml/ holds no sources (a build of the platform alone): every model is refused
 * with UNSUPPORTED, honestly, so the protocol (HELLO, STATUS, transfer, hash check) can be exercised. */
#include "ml.h"

const uint8_t ml_supported_ops[] = {0};
const uint32_t ml_supported_op_count = 0;

const char *ml_last_error(void) { return "this firmware was built without the ML kernels (firmware/ml/)"; }
ml_status ml_load(const uint8_t *model, uint32_t len, ml_info *info)
{
    (void)model;
    (void)len;
    (void)info;
    return ML_UNSUPPORTED;
}
void ml_unload(void) {}
const ml_info *ml_model_info(void) { return 0; }
uint32_t ml_train_bytes(uint32_t samples, uint32_t batch_size)
{
    (void)samples;
    (void)batch_size;
    return 0;
}
ml_status ml_infer(const int8_t *in, int8_t *out)
{
    (void)in;
    (void)out;
    return ML_NO_MODEL;
}
void ml_train_config_default(ml_train_config *cfg) { (void)cfg; }
ml_status ml_train_last_layer(const ml_train_config *cfg, const int8_t *inputs, const uint8_t *labels,
                              uint32_t samples, ml_train_result *result)
{
    (void)cfg;
    (void)inputs;
    (void)labels;
    (void)samples;
    (void)result;
    return ML_NO_MODEL;
}
