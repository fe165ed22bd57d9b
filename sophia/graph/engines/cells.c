/* Per-frame cell kernels of the fused recurrences (sophia/graph/engines/fused*.py).
 *
 * One kernel call does all the elementwise work of one frame of an LSTM or GRU layer:
 * bias, gate nonlinearities, state update, the unit options (peepholes, layer norm,
 * the Phased-LSTM clock gate, recurrent batch norm), and in the backward pass the
 * gradients of the pre-activations and of the parameters, in one pass over the rows,
 * written into preallocated arrays. The matmuls stay on BLAS, called by the Ops.
 *
 * native.py compiles this file with the system's C compiler, once per machine,
 * dtype and set of option bits, and loads the library with ctypes:
 *   -DSOPHIA_DOUBLE=0|1   real is float or double;
 *   -DSOPHIA_FLAGS=bits   PEEPHOLE 1 | LAYER_NORM 2 | CLOCK 4 | POPULATION 8, constants of
 *                         the option and batch-norm cells, so the branches of the options
 *                         that are off are compiled away;
 *   -DSOPHIA_WANT_family  the kernels compiled: a kernel and its gradient, e.g.
 *                         -DSOPHIA_WANT_lstm_options_cell.
 *
 * Every kernel takes the addresses of its arrays (C-contiguous, shapes in native.SHAPES),
 * then batch (rows), i (the layer width; for layer_norm_rows, clock_openness and
 * batch_norm_frame the rows' width) and one (1 in real; kept for the calling convention).
 * Gradient accumulators (db, d_gamma, ...) and batch norm's scratch are double, summed
 * into across the frames of a window. No pointer is declared restrict: some outputs may
 * be their inputs (documented per kernel).
 *
 * float: tanh is Eigen's rational approximation (|error| < 3e-7), which vectorises,
 * and sigma(x) = tanh(x / 2) / 2 + 1 / 2. double: libm's tanh and exp, as exact as the
 * scan graph. Row statistics (layer norm, batch norm) are summed in double.
 *
 * Gate layouts: LSTM [input, forget, output, candidate], GRU [reset, update, candidate]
 * with the reset gate applied after the recurrent product.
 */
#include <math.h>
#include <stddef.h>

#ifndef SOPHIA_DOUBLE
#define SOPHIA_DOUBLE 0
#endif
#ifndef SOPHIA_FLAGS
#define SOPHIA_FLAGS 0
#endif

#define PEEPHOLE ((SOPHIA_FLAGS & 1) != 0)
#define LAYER_NORM ((SOPHIA_FLAGS & 2) != 0)
#define CLOCK ((SOPHIA_FLAGS & 4) != 0)
#define POPULATION ((SOPHIA_FLAGS & 8) != 0)
#define EPSILON 1e-5            /* as sophia.graph.norms.EPSILON */

#ifdef __cplusplus
#define EXPORT extern "C" __attribute__((visibility("default")))
#else
#define EXPORT __attribute__((visibility("default")))
#endif
#define INLINE static inline __attribute__((always_inline))
/* The loops over a row's units: the kernels' arrays never overlap but element for element
 * (an output that is its input), so no iteration depends on another's writes. Without the
 * promise GCC leaves the loops of a kernel's row loop unvectorised. */
#define IVDEP _Pragma("GCC ivdep")

typedef ptrdiff_t idx;

#if SOPHIA_DOUBLE
typedef double real;
#define FABS fabs
#define FLOOR floor
#define SQRT sqrt
INLINE real tanh_(real x) { return tanh(x); }
INLINE real sigmoid(real x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    real e = exp(x);
    return e / (1.0 + e);
}
#else
typedef float real;
#define FABS fabsf
#define FLOOR floorf
#define SQRT sqrtf
INLINE real tanh_(real x)
{
    /* clamped to +-7.9988, where tanh rounds to +-1 in float */
    const float clamp = 7.99881172180175781f;
    x = x < -clamp ? -clamp : (x > clamp ? clamp : x);
    const float x2 = x * x;
    float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = x2 * p + -8.60467152213735e-11f;
    p = x2 * p + 5.12229709037114e-08f;
    p = x2 * p + 1.48572235717979e-05f;
    p = x2 * p + 6.37261928875436e-04f;
    p = x2 * p + 4.89352455891786e-03f;
    float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = x2 * q + 2.26843463243900e-03f;
    q = x2 * q + 4.89352518554385e-03f;
    return x * p / q;
}
INLINE real sigmoid(real x) { return 0.5f * tanh_(0.5f * x) + 0.5f; }
#endif

INLINE real sign(real x) { return (real)((x > 0) - (x < 0)); }

/* -- rows: layer norm, the clock's blend ------------------------------------------------ */

/* Layer norm of the row x [w] in place: n = (x - mean) / sd, x = gamma n + beta; returns 1 / sd. */
INLINE real normalise_row(real *x, real *n, const real *gamma, const real *beta, idx w)
{
    double total = 0.0;
    IVDEP for (idx k = 0; k < w; k++)
        total += x[k];
    const real mean = (real)(total / w);
    total = 0.0;
    IVDEP for (idx k = 0; k < w; k++)
        total += (x[k] - mean) * (x[k] - mean);
    const real r = (real)(1.0 / sqrt(total / w + EPSILON));
    IVDEP for (idx k = 0; k < w; k++)
        n[k] = (x[k] - mean) * r;
    IVDEP for (idx k = 0; k < w; k++)
        x[k] = gamma[k] * n[k] + beta[k];
    return r;
}

/* Backward of normalise_row: from dy [w], add dy n into d_gamma and write the gradient of
 * its input into dx (dx may be dy). */
INLINE void normalise_row_grad(const real *dy, const real *n, real r, const real *gamma, double *d_gamma,
                               real *dx, idx w)
{
    double s1 = 0.0, s2 = 0.0;
    IVDEP for (idx k = 0; k < w; k++) {
        const real gd = gamma[k] * dy[k];
        s1 += gd;
        s2 += gd * n[k];
        d_gamma[k] += dy[k] * n[k];
    }
    const real m1 = (real)(s1 / w), m2 = (real)(s2 / w);
    IVDEP for (idx k = 0; k < w; k++)
        dx[k] = r * (gamma[k] * dy[k] - m1 - n[k] * m2);
}

/* The clock gate's blend of one row: out = k new + (1 - k) prev. */
INLINE void blend(const real *k, const real *fresh, const real *prev, real *out, idx i)
{
    IVDEP for (idx j = 0; j < i; j++)
        out[j] = k[j] * fresh[j] + (1 - k[j]) * prev[j];
}

/* -- the LSTM parts the option and batch-norm cells share, for one batch row ------------ */

/* The input, forget and candidate gates of the pre-activations ab [4i] activated in place
 * (the first two seeing the entering cell cp through the peepholes), and the new cell cn. */
INLINE void lstm_new_cell(real *ab, const real *cp, real *cn, const real *peep, idx i, int peephole)
{
    if (peephole)
        IVDEP for (idx j = 0; j < i; j++) {
            ab[j] += cp[j] * peep[j];
            ab[i + j] += cp[j] * peep[i + j];
        }
    IVDEP for (idx j = 0; j < 2 * i; j++)
        ab[j] = sigmoid(ab[j]);
    IVDEP for (idx j = 0; j < i; j++)
        ab[3 * i + j] = tanh_(ab[3 * i + j]);
    IVDEP for (idx j = 0; j < i; j++)
        cn[j] = ab[i + j] * cp[j] + ab[j] * ab[3 * i + j];
}

/* The output gate s_o [i] activated in place, seeing the new cell cn through its peephole. */
INLINE void lstm_output_gate(real *s_o, const real *cn, const real *peep, idx i, int peephole)
{
    if (peephole)
        IVDEP for (idx j = 0; j < i; j++)
            s_o[j] += cn[j] * peep[2 * i + j];
    IVDEP for (idx j = 0; j < i; j++)
        s_o[j] = sigmoid(s_o[j]);
}

/* From dh + dh_out and dc + dc_out of one row: the gradients of the new h and c (before the
 * clock's blend with kb) into d_o and d_i, that of the openness into dkb, and the blend's
 * direct paths into the entering states left in dhb, dcb (zero without a clock). */
INLINE void lstm_clock_grad(real *dhb, real *dcb, const real *dhob, const real *dcob, const real *hn,
                            const real *cn, const real *hib, const real *cib, const real *kb, real *dkb,
                            real *d_o, real *d_i, idx i, int clock)
{
    if (clock)
        IVDEP for (idx j = 0; j < i; j++) {
            const real gh = dhb[j] + dhob[j], gc = dcb[j] + dcob[j], kj = kb[j];
            dkb[j] = gh * (hn[j] - hib[j]) + gc * (cn[j] - cib[j]);
            dhb[j] = (1 - kj) * gh;
            dcb[j] = (1 - kj) * gc;
            d_o[j] = kj * gh;
            d_i[j] = kj * gc;
        }
    else
        IVDEP for (idx j = 0; j < i; j++) {
            d_o[j] = dhb[j] + dhob[j];
            d_i[j] = dcb[j] + dcob[j];
            dhb[j] = 0;
            dcb[j] = 0;
        }
}

/* Through h = sigma(o) tanh(y), y = gamma_c n_c + beta_c: d_o [i] (the gradient of h)
 * becomes that of o's pre-activation; d_y [i] gets that of y. */
INLINE void lstm_normed_output_grad(const real *s_o, const real *ncb, const real *gamma_c, const real *beta_c,
                                    real *d_o, real *d_y, idx i)
{
    IVDEP for (idx j = 0; j < i; j++) {
        const real so = s_o[j], ty = tanh_(gamma_c[j] * ncb[j] + beta_c[j]), gh = d_o[j];
        d_o[j] = gh * ty * so * (1 - so);
        d_y[j] = gh * so * (1 - ty * ty);
    }
}

/* The output peephole's part: into d_i (the new cell's gradient) and d_peep. */
INLINE void peephole_output_grad(const real *d_o, const real *cn, real *d_i, const real *peep, double *d_peep,
                                 idx i)
{
    IVDEP for (idx j = 0; j < i; j++) {
        d_i[j] += d_o[j] * peep[2 * i + j];
        d_peep[2 * i + j] += d_o[j] * cn[j];
    }
}

/* The input and forget peepholes' part: into dcb (the entering cell's gradient) and d_peep. */
INLINE void peephole_input_grad(const real *d_i, const real *d_f, const real *cib, real *dcb, const real *peep,
                                double *d_peep, idx i)
{
    IVDEP for (idx j = 0; j < i; j++) {
        dcb[j] += d_i[j] * peep[j] + d_f[j] * peep[i + j];
        d_peep[j] += d_i[j] * cib[j];
        d_peep[i + j] += d_f[j] * cib[j];
    }
}

/* From gc [i], the new cell's gradient (read from d_i, plus d_extra where given): the gradients
 * of the input, forget and candidate pre-activations into d_i, d_f, d_g [i], and gc sf added
 * into dcb, the entering cell's gradient. ab: the activated gates [4i]. */
INLINE void lstm_gates_grad(const real *ab, const real *cib, real *d_i, real *d_f, real *d_g,
                            const real *d_extra, real *dcb, idx i)
{
    IVDEP for (idx j = 0; j < i; j++) {
        const real si = ab[j], sf = ab[i + j], sg = ab[3 * i + j];
        const real gc = d_extra ? d_i[j] + d_extra[j] : d_i[j];
        d_f[j] = gc * cib[j] * sf * (1 - sf);
        d_g[j] = gc * si * (1 - sg * sg);
        d_i[j] = gc * sg * si * (1 - si);
        dcb[j] += gc * sf;
    }
}

INLINE void add_into(double *acc, const real *x, idx n)
{
    IVDEP for (idx k = 0; k < n; k++)
        acc[k] += x[k];
}

/* -- the plain cells ------------------------------------------------------------------- */

#ifdef SOPHIA_WANT_lstm_cell
/* a = h_prev W_h [B][4i] -> the activated gates of xa + bias + a, in place; c, h [B][i] =
 * the new states. */
EXPORT void sophia_lstm_cell(real *a, const real *xa, const real *bias, const real *c_prev, real *c, real *h,
                             idx batch, idx i, real one)
{
    const idx g = 4 * i;
    (void)one;
    for (idx b = 0; b < batch; b++) {
        real *ab = a + b * g, *cb = c + b * i, *hb = h + b * i;
        const real *xb = xa + b * g, *cp = c_prev + b * i;
        IVDEP for (idx k = 0; k < 3 * i; k++)
            ab[k] = sigmoid(ab[k] + xb[k] + bias[k]);
        IVDEP for (idx j = 3 * i; j < g; j++)
            ab[j] = tanh_(ab[j] + xb[j] + bias[j]);
        IVDEP for (idx j = 0; j < i; j++)
            cb[j] = ab[i + j] * cp[j] + ab[j] * ab[3 * i + j];
        IVDEP for (idx j = 0; j < i; j++)
            hb[j] = ab[2 * i + j] * tanh_(cb[j]);
    }
}
#endif

#ifdef SOPHIA_WANT_lstm_cell
/* Gradients of the frame's pre-activations into d [B][4i] (and summed into db [4i]) from
 * dh + dh_out and dc + dc_out; dc becomes the gradient of the entering c, dh is left for
 * the caller to overwrite. */
EXPORT void sophia_lstm_cell_grad(real *dh, real *dc, const real *dh_out, const real *dc_out, const real *a,
                                  const real *c, const real *c_in, real *d, double *db, idx batch, idx i, real one)
{
    const idx g = 4 * i;
    (void)one;
    for (idx b = 0; b < batch; b++) {
        const real *ab = a + b * g, *cb = c + b * i, *cib = c_in + b * i;
        const real *dhb = dh + b * i, *dhob = dh_out + b * i, *dcob = dc_out + b * i;
        real *db_ = d + b * g, *dcb = dc + b * i;
        IVDEP for (idx j = 0; j < i; j++) {       /* dh + dh_out into d o and into d c (one tanh c) */
            const real gh = dhb[j] + dhob[j], tc = tanh_(cb[j]), so = ab[2 * i + j];
            db_[2 * i + j] = gh * tc * so * (1 - so);
            dcb[j] += dcob[j] + gh * so * (1 - tc * tc);
        }
        IVDEP for (idx j = 0; j < i; j++) {       /* d i, d f, d g; then d c into the entering c */
            const real si = ab[j], sf = ab[i + j], sg = ab[3 * i + j], dcj = dcb[j];
            db_[j] = dcj * sg * si * (1 - si);
            db_[i + j] = dcj * cib[j] * sf * (1 - sf);
            db_[3 * i + j] = dcj * si * (1 - sg * sg);
            dcb[j] = dcj * sf;
        }
        add_into(db, db_, g);
    }
}
#endif

/* -- the GRU cell with its options (layer norm on h_prev W_h, the clock gate) -------------- */

/* One GRU frame: ha = h_prev W_h [B][3i] (with norm: normalised in place, n_h [B][3i] and
 * rstd_h [B] kept), a [B][3i] the activated gates, hn [B][i] the candidate's recurrent
 * product, h_new [B][i] the state before the clock's blend with k [B][i] into h (with no
 * clock, h_new may be h). */
INLINE void gru_rows(real *ha, const real *xa, const real *bias, const real *h_prev, const real *gamma_h,
                     const real *beta_h, const real *k, real *n_h, real *rstd_h, real *a, real *hn, real *h_new,
                     real *h, idx batch, idx i, int norm, int clock)
{
    const idx g = 3 * i;
    for (idx b = 0; b < batch; b++) {
        real *hab = ha + b * g, *ab = a + b * g, *hnb = hn + b * i, *hb = h_new + b * i;
        const real *xb = xa + b * g, *hpb = h_prev + b * i;
        if (norm)
            rstd_h[b] = normalise_row(hab, n_h + b * g, gamma_h, beta_h, g);
        IVDEP for (idx q = 0; q < 2 * i; q++)
            ab[q] = sigmoid(xb[q] + bias[q] + hab[q]);
        IVDEP for (idx j = 0; j < i; j++)
            hnb[j] = hab[2 * i + j];
        IVDEP for (idx j = 0; j < i; j++)
            ab[2 * i + j] = tanh_(xb[2 * i + j] + bias[2 * i + j] + ab[j] * hnb[j]);
        IVDEP for (idx j = 0; j < i; j++)         /* n + z (h_prev - n) */
            hb[j] = ab[2 * i + j] + ab[i + j] * (hpb[j] - ab[2 * i + j]);
        if (clock)
            blend(k + b * i, hb, hpb, h + b * i, i);
    }
}

/* Backward of gru_rows for one frame: from dh + dh_out, d [B][3i] = the gradient of xa
 * (summed into db), d_ha [B][3i] = of h_prev W_h (before the norm, with norm), dk [B][i] =
 * of the clock's openness; d_gamma_h, d_beta_h [3i] summed. dh becomes the gradient of the
 * entering h by the direct paths (the caller adds d_ha W_h^T). */
INLINE void gru_rows_grad(real *dh, const real *dh_out, const real *a, const real *h_in, const real *hn,
                          const real *h_new, const real *n_h, const real *rstd_h, const real *gamma_h,
                          const real *k, real *d, real *d_ha, real *dk, double *db, double *d_gamma_h,
                          double *d_beta_h, idx batch, idx i, int norm, int clock)
{
    const idx g = 3 * i;
    for (idx b = 0; b < batch; b++) {
        const real *ab = a + b * g, *hib = h_in + b * i, *hnb = hn + b * i, *dhob = dh_out + b * i;
        real *db_ = d + b * g, *drb = d_ha + b * g, *dhb = dh + b * i;
        const real *s_r = ab, *s_z = ab + i, *s_n = ab + 2 * i;
        real *d_r = db_, *d_z = db_ + i, *d_n = db_ + 2 * i;
        if (clock) {
            const real *kb = k + b * i, *hwb = h_new + b * i;
            real *dkb = dk + b * i;
            IVDEP for (idx j = 0; j < i; j++) {
                const real gj = dhb[j] + dhob[j], kj = kb[j];
                dkb[j] = gj * (hwb[j] - hib[j]);
                dhb[j] = kj * gj;               /* the gradient of h_new, for now */
                drb[j] = (1 - kj) * gj;         /* the direct path, for now */
            }
        } else
            IVDEP for (idx j = 0; j < i; j++) {
                dhb[j] += dhob[j];
                drb[j] = 0;
            }
        IVDEP for (idx j = 0; j < i; j++)         /* d n = dh (1 - z) (1 - n^2) */
            d_n[j] = dhb[j] * (1 - s_z[j]) * (1 - s_n[j] * s_n[j]);
        IVDEP for (idx j = 0; j < i; j++)         /* d z = dh (h_prev - n) sigma'(z) */
            d_z[j] = dhb[j] * (hib[j] - s_n[j]) * s_z[j] * (1 - s_z[j]);
        IVDEP for (idx j = 0; j < i; j++)         /* dh: z dh + the clock's direct path */
            dhb[j] = dhb[j] * s_z[j] + drb[j];
        IVDEP for (idx j = 0; j < i; j++)         /* d r = d n hn sigma'(r) */
            d_r[j] = d_n[j] * hnb[j] * s_r[j] * (1 - s_r[j]);
        IVDEP for (idx j = 0; j < 2 * i; j++)
            drb[j] = db_[j];
        IVDEP for (idx j = 0; j < i; j++)
            drb[2 * i + j] = d_n[j] * s_r[j];
        add_into(db, db_, g);
        if (norm) {
            add_into(d_beta_h, drb, g);
            normalise_row_grad(drb, n_h + b * g, rstd_h[b], gamma_h, d_gamma_h, drb, g);
        }
    }
}

#ifdef SOPHIA_WANT_gru_cell
/* ha = h_prev W_h [B][3i] -> activated gates a, the candidate's product hn, new h. */
EXPORT void sophia_gru_cell(real *ha, const real *xa, const real *bias, const real *h_prev, real *a, real *hn,
                            real *h, idx batch, idx i, real one)
{
    (void)one;
    gru_rows(ha, xa, bias, h_prev, NULL, NULL, NULL, NULL, NULL, a, hn, h, h, batch, i, 0, 0);
}
#endif

#ifdef SOPHIA_WANT_gru_cell
/* Gradients of xa (d, summed into db) and of h_prev W_h (d_ha) [B][3i] from dh + dh_out; dh
 * becomes its direct path z dh into the entering h (the caller adds d_ha W_h^T). */
EXPORT void sophia_gru_cell_grad(real *dh, const real *dh_out, const real *a, const real *h_in, const real *hn,
                                 real *d, real *d_ha, double *db, idx batch, idx i, real one)
{
    (void)one;
    gru_rows_grad(dh, dh_out, a, h_in, hn, NULL, NULL, NULL, NULL, NULL, d, d_ha, NULL, db, NULL, NULL,
                  batch, i, 0, 0);
}
#endif

#ifdef SOPHIA_WANT_gru_options_cell
/* gru_rows with the options of SOPHIA_FLAGS (LAYER_NORM, CLOCK). */
EXPORT void sophia_gru_options_cell(real *ha, const real *xa, const real *bias, const real *h_prev,
                                    const real *gamma_h, const real *beta_h, const real *k, real *n_h,
                                    real *rstd_h, real *a, real *hn, real *h_new, real *h, idx batch, idx i,
                                    real one)
{
    (void)one;
    gru_rows(ha, xa, bias, h_prev, gamma_h, beta_h, k, n_h, rstd_h, a, hn, h_new, h, batch, i, LAYER_NORM, CLOCK);
}
#endif

#ifdef SOPHIA_WANT_gru_options_cell
/* gru_rows_grad with the options of SOPHIA_FLAGS (LAYER_NORM, CLOCK). */
EXPORT void sophia_gru_options_cell_grad(real *dh, const real *dh_out, const real *a, const real *h_in,
                                         const real *hn, const real *h_new, const real *n_h, const real *rstd_h,
                                         const real *gamma_h, const real *k, real *d, real *d_ha, real *dk,
                                         double *db, double *d_gamma_h, double *d_beta_h, idx batch, idx i,
                                         real one)
{
    (void)one;
    gru_rows_grad(dh, dh_out, a, h_in, hn, h_new, n_h, rstd_h, gamma_h, k, d, d_ha, dk, db, d_gamma_h, d_beta_h,
                  batch, i, LAYER_NORM, CLOCK);
}
#endif

/* -- the LSTM cell with its options (peepholes, layer norm, the clock gate) --------------- */

#ifdef SOPHIA_WANT_lstm_options_cell
/* One LSTM frame with the options of SOPHIA_FLAGS. a = h_prev W_h [B][4i] becomes the
 * activated gates; n_h [B][4i], rstd_h [B] are the normalised product and its 1/sd (layer
 * norm), n_c [B][i], rstd_c [B] the normalised cell; c_new, h_new [B][i] the states before
 * the clock gate's blend with k [B][i], c, h after it (with no clock, c_new and h_new may be
 * c and h). peep [3i]: the input, forget, output peepholes; gamma_h, beta_h [4i], gamma_c,
 * beta_c [i]: the norms' gains and biases. */
EXPORT void sophia_lstm_options_cell(real *a, const real *xa, const real *bias, const real *h_prev,
                                     const real *c_prev, const real *peep, const real *gamma_h, const real *beta_h,
                                     const real *gamma_c, const real *beta_c, const real *k, real *n_h,
                                     real *rstd_h, real *n_c, real *rstd_c, real *c_new, real *h_new, real *c,
                                     real *h, idx batch, idx i, real one)
{
    const idx g = 4 * i;
    (void)one;
    for (idx b = 0; b < batch; b++) {
        real *ab = a + b * g, *cn = c_new + b * i, *hn = h_new + b * i, *s_o = ab + 2 * i;
        const real *xb = xa + b * g, *hp = h_prev + b * i, *cp = c_prev + b * i;
        if (LAYER_NORM)
            rstd_h[b] = normalise_row(ab, n_h + b * g, gamma_h, beta_h, g);
        IVDEP for (idx q = 0; q < g; q++)
            ab[q] += xb[q] + bias[q];
        lstm_new_cell(ab, cp, cn, peep, i, PEEPHOLE);
        lstm_output_gate(s_o, cn, peep, i, PEEPHOLE);
        if (LAYER_NORM) {
            IVDEP for (idx j = 0; j < i; j++)
                hn[j] = cn[j];
            rstd_c[b] = normalise_row(hn, n_c + b * i, gamma_c, beta_c, i);
            IVDEP for (idx j = 0; j < i; j++)
                hn[j] = s_o[j] * tanh_(hn[j]);
        } else
            IVDEP for (idx j = 0; j < i; j++)
                hn[j] = s_o[j] * tanh_(cn[j]);
        if (CLOCK) {
            blend(k + b * i, cn, cp, c + b * i, i);
            blend(k + b * i, hn, hp, h + b * i, i);
        }
    }
}
#endif

#ifdef SOPHIA_WANT_lstm_options_cell
/* Backward of sophia_lstm_options_cell for one frame. From dh + dh_out and dc + dc_out (the
 * gradients of the frame's h and c): d [B][4i] = the gradient of the pre-activations (= of
 * xa; summed into db), d_ha [B][4i] = of h_prev W_h (with layer norm; without it the caller
 * uses d), dk [B][i] = of the clock's openness; the parameters' gradients are summed into
 * d_peep [3i], d_gamma_h [4i], d_gamma_c and d_beta_c [i]. dc becomes the gradient of the
 * entering c; dh that of the entering h by the clock's direct path (zero without a clock):
 * the caller adds d_ha W_h^T. */
EXPORT void sophia_lstm_options_cell_grad(real *dh, real *dc, const real *dh_out, const real *dc_out,
                                          const real *a, const real *c_new, const real *h_new, const real *h_in,
                                          const real *c_in, const real *n_h, const real *rstd_h, const real *n_c,
                                          const real *rstd_c, const real *peep, const real *gamma_h,
                                          const real *gamma_c, const real *beta_c, const real *k, real *d,
                                          real *d_ha, real *dk, double *db, double *d_peep, double *d_gamma_h,
                                          double *d_gamma_c, double *d_beta_c, idx batch, idx i, real one)
{
    const idx g = 4 * i;
    (void)one;
    for (idx b = 0; b < batch; b++) {
        const real *ab = a + b * g, *cn = c_new + b * i, *hn = h_new + b * i, *hib = h_in + b * i;
        const real *cib = c_in + b * i, *s_o = ab + 2 * i;
        real *db_ = d + b * g, *dhb = dh + b * i, *dcb = dc + b * i;
        real *d_i = db_, *d_f = db_ + i, *d_o = db_ + 2 * i, *d_g = db_ + 3 * i;
        /* d_i holds the gradient of c_new until lstm_gates_grad; d_g that of the cell norm's output */
        lstm_clock_grad(dhb, dcb, dh_out + b * i, dc_out + b * i, hn, cn, hib, cib, k + b * i, dk + b * i, d_o,
                        d_i, i, CLOCK);
        if (LAYER_NORM) {
            const real *ncb = n_c + b * i;
            lstm_normed_output_grad(s_o, ncb, gamma_c, beta_c, d_o, d_g, i);
            add_into(d_beta_c, d_g, i);
            normalise_row_grad(d_g, ncb, rstd_c[b], gamma_c, d_gamma_c, d_g, i);
            IVDEP for (idx j = 0; j < i; j++)
                d_i[j] += d_g[j];
        } else
            IVDEP for (idx j = 0; j < i; j++) {
                const real so = s_o[j], tc = tanh_(cn[j]), gh = d_o[j];
                d_o[j] = gh * tc * so * (1 - so);
                d_i[j] += gh * so * (1 - tc * tc);
            }
        if (PEEPHOLE)
            peephole_output_grad(d_o, cn, d_i, peep, d_peep, i);
        lstm_gates_grad(ab, cib, d_i, d_f, d_g, NULL, dcb, i);
        if (PEEPHOLE)
            peephole_input_grad(d_i, d_f, cib, dcb, peep, d_peep, i);
        add_into(db, db_, g);
        if (LAYER_NORM)
            normalise_row_grad(db_, n_h + b * g, rstd_h[b], gamma_h, d_gamma_h, d_ha + b * g, g);
    }
}
#endif

/* -- layer norm of rows, the clock gate's openness ------------------------------------- */

#ifdef SOPHIA_WANT_layer_norm_rows
/* Layer norm of every row of x [R][w]: y = gamma n + beta with n = (x - mean) / sd [R][w]
 * and rstd = 1 / sd [R] kept for the gradient; gamma, beta [w]. */
EXPORT void sophia_layer_norm_rows(const real *x, const real *gamma, const real *beta, real *n, real *rstd,
                                   real *y, idx rows, idx w, real one)
{
    (void)one;
    for (idx r = 0; r < rows; r++) {
        real *yr = y + r * w;
        const real *xr = x + r * w;
        IVDEP for (idx k = 0; k < w; k++)
            yr[k] = xr[k];
        rstd[r] = normalise_row(yr, n + r * w, gamma, beta, w);
    }
}
#endif

#ifdef SOPHIA_WANT_layer_norm_rows
/* Backward of sophia_layer_norm_rows: dx [R][w] from dy [R][w]; the gradients of gamma and
 * beta [w] summed into d_gamma and d_beta. */
EXPORT void sophia_layer_norm_rows_grad(const real *dy, const real *n, const real *rstd, const real *gamma,
                                        real *dx, double *d_gamma, double *d_beta, idx rows, idx w, real one)
{
    (void)one;
    for (idx r = 0; r < rows; r++) {
        add_into(d_beta, dy + r * w, w);
        normalise_row_grad(dy + r * w, n + r * w, rstd[r], gamma, d_gamma, dx + r * w, w);
    }
}
#endif

#ifdef SOPHIA_WANT_clock_openness
/* The Phased-LSTM gate's openness k [R][i] at the times [R] (the rows of a window's [T][B])
 * from its raw period, shift and open ratio [i], as sophia.graph.clock.TimeGate.openness
 * computes it; leak [1] is alpha (0 at inference). */
EXPORT void sophia_clock_openness(const real *time, const real *tau_raw, const real *shift, const real *r_raw,
                                  const real *leak, real *k, idx rows, idx i, real one)
{
    const real alpha = leak[0], floor_ = (real)1e-3;
    (void)one;
    for (idx r = 0; r < rows; r++) {
        real *kr = k + r * i;
        const real t = time[r];
        IVDEP for (idx j = 0; j < i; j++) {
            const real tau = FABS(tau_raw[j]) + floor_;
            const real raw = FABS(r_raw[j]), ratio = raw < floor_ ? floor_ : (raw > 1 ? 1 : raw);
            const real cycles = (t - shift[j]) / tau, phase = cycles - FLOOR(cycles);
            const real opening = 2 * phase / ratio;
            kr[j] = phase < ratio / 2 ? opening : (phase < ratio ? 2 - opening : alpha * phase);
        }
    }
}
#endif

#ifdef SOPHIA_WANT_clock_openness
/* Backward of sophia_clock_openness: from dk [R][i], the gradients of the raw period, shift
 * and open ratio [i] summed into d_tau, d_shift, d_r (the phase's floor has no gradient; abs
 * and the clip of the ratio pass it as PyTensor's do). */
EXPORT void sophia_clock_openness_grad(const real *time, const real *tau_raw, const real *shift, const real *r_raw,
                                       const real *leak, const real *dk, double *d_tau, double *d_shift,
                                       double *d_r, idx rows, idx i, real one)
{
    const real alpha = leak[0], floor_ = (real)1e-3;
    (void)one;
    for (idx r = 0; r < rows; r++) {
        const real *dkr = dk + r * i;
        const real t = time[r];
        IVDEP for (idx j = 0; j < i; j++) {
            const real tau = FABS(tau_raw[j]) + floor_;
            const real raw = FABS(r_raw[j]), ratio = raw < floor_ ? floor_ : (raw > 1 ? 1 : raw);
            const real cycles = (t - shift[j]) / tau, phase = cycles - FLOOR(cycles);
            real d_phase, d_ratio;
            if (phase < ratio / 2) {
                d_phase = 2 / ratio;
                d_ratio = -2 * phase / (ratio * ratio);
            } else if (phase < ratio) {
                d_phase = -2 / ratio;
                d_ratio = 2 * phase / (ratio * ratio);
            } else {
                d_phase = alpha;
                d_ratio = 0;
            }
            const real gj = dkr[j] * d_phase;
            d_shift[j] -= gj / tau;
            d_tau[j] -= gj * cycles / tau * sign(tau_raw[j]);
            if (floor_ <= raw && raw <= 1)
                d_r[j] += dkr[j] * d_ratio * sign(r_raw[j]);
        }
    }
}
#endif

/* -- recurrent batch norm (Cooijmans et al. 2016) ---------------------------------------
 * Batch norm normalises each unit over the batch: n = (x - mean) / sqrt(var + eps),
 * y = gamma n + beta, with the batch's mean and biased var (training) or the population's
 * mean and var of each row's time step (POPULATION: one row of statistics per batch row,
 * given). Sums over the batch and each unit's 1 / sd run in double in the caller's scratch
 * [3][sw] (sw the widest normalised row). Statistics arrays are [R][w], R = 1 in training
 * (written by the kernel) and R = B with POPULATION (read). The gradients are those of
 * training graphs (batch statistics). x rows are `stride` apart; n and y rows are w apart. */

/* Mean and biased variance over the rows of x [B][w] into mean, var [w], in one pass: the
 * double sums of x and x^2 (the variance their difference, never below 0). */
INLINE void bn_stats(const real *x, idx batch, idx w, idx stride, real *mean, real *var, double *scratch, idx sw)
{
    double *s = scratch, *q = scratch + sw;
    IVDEP for (idx k = 0; k < w; k++)
        s[k] = q[k] = 0.0;
    for (idx b = 0; b < batch; b++) {
        const real *xb = x + b * stride;
        IVDEP for (idx k = 0; k < w; k++) {
            s[k] += xb[k];
            q[k] += (double)xb[k] * xb[k];
        }
    }
    IVDEP for (idx k = 0; k < w; k++) {
        const double m = s[k] / batch, v = q[k] / batch - m * m;
        mean[k] = (real)m;
        var[k] = (real)(v > 0.0 ? v : 0.0);
    }
}

/* n = (x - mean) / sqrt(var + eps) for the rows of x [B][w]; mean, var [R][w] (R = 1: the
 * same for every row, its 1 / sd computed once into the scratch's third row). */
INLINE void bn_normalise(const real *x, idx batch, idx w, const real *mean, const real *var, int population,
                         real *n, double *scratch, idx sw)
{
    const real eps = (real)EPSILON;
    if (!population) {
        double *rstd = scratch + 2 * sw;
        IVDEP for (idx k = 0; k < w; k++)
            rstd[k] = 1.0 / SQRT(var[k] + eps);
        for (idx b = 0; b < batch; b++) {
            const real *xb = x + b * w;
            real *nb = n + b * w;
            IVDEP for (idx k = 0; k < w; k++)
                nb[k] = (xb[k] - mean[k]) * (real)rstd[k];
        }
        return;
    }
    for (idx b = 0; b < batch; b++) {
        const real *xb = x + b * w, *mb = mean + b * w, *vb = var + b * w;
        real *nb = n + b * w;
        IVDEP for (idx k = 0; k < w; k++)
            nb[k] = (xb[k] - mb[k]) / SQRT(vb[k] + eps);
    }
}

/* y = gamma n + beta for the rows of n [B][w] (y may be n's input). */
INLINE void bn_scale(const real *n, const real *gamma, const real *beta, real *y, idx batch, idx w)
{
    for (idx b = 0; b < batch; b++)
        IVDEP for (idx k = 0; k < w; k++)
            y[b * w + k] = gamma[k] * n[b * w + k] + beta[k];
}

/* Backward of the batch-statistics norm of x [B][w]: dx from dy (rows `stride` apart in
 * both; dx may be dy), with n [B][w] and var [w] of the forward pass; sum(dy n) and sum(dy)
 * added into d_gamma and d_beta [w]. */
INLINE void bn_grad(const real *dy, idx stride, const real *n, const real *var, const real *gamma, real *dx,
                    idx batch, idx w, double *scratch, idx sw, double *d_gamma, double *d_beta)
{
    double *s1 = scratch, *s2 = scratch + sw, *scale = scratch + 2 * sw;
    const real eps = (real)EPSILON;
    IVDEP for (idx k = 0; k < w; k++)
        s1[k] = s2[k] = 0.0;
    for (idx b = 0; b < batch; b++) {
        const real *dyb = dy + b * stride, *nb = n + b * w;
        IVDEP for (idx k = 0; k < w; k++) {
            s1[k] += dyb[k];
            s2[k] += dyb[k] * nb[k];
        }
    }
    IVDEP for (idx k = 0; k < w; k++) {
        d_beta[k] += s1[k];
        d_gamma[k] += s2[k];
        scale[k] = gamma[k] / SQRT(var[k] + eps);
        s1[k] = scale[k] * s1[k] / batch;
        s2[k] = scale[k] * s2[k] / batch;
    }
    for (idx b = 0; b < batch; b++) {        /* dx = gamma / sd (dy - mean(dy) - n mean(dy n)) */
        const real *dyb = dy + b * stride, *nb = n + b * w;
        real *dxb = dx + b * stride;
        IVDEP for (idx k = 0; k < w; k++)
            dxb[k] = (real)scale[k] * dyb[k] - (real)s1[k] - nb[k] * (real)s2[k];
    }
}

#ifdef SOPHIA_WANT_batch_norm_frame
/* Batch norm of one frame x [B][w] with its own statistics: mean, var [w] written, n [B][w]
 * kept for the gradient, y = gamma n + beta [B][w] (y may be x); scratch [3][w]. */
EXPORT void sophia_batch_norm_frame(const real *x, const real *gamma, const real *beta, real *n, real *mean,
                                    real *var, real *y, double *scratch, idx batch, idx w, real one)
{
    (void)one;
    bn_stats(x, batch, w, w, mean, var, scratch, w);
    bn_normalise(x, batch, w, mean, var, 0, n, scratch, w);
    bn_scale(n, gamma, beta, y, batch, w);
}
#endif

#ifdef SOPHIA_WANT_batch_norm_frame
/* Backward of sophia_batch_norm_frame: dx [B][w] from dy; d_gamma, d_beta [w] summed. */
EXPORT void sophia_batch_norm_frame_grad(const real *dy, const real *n, const real *var, const real *gamma,
                                         real *dx, double *scratch, double *d_gamma, double *d_beta, idx batch,
                                         idx w, real one)
{
    (void)one;
    bn_grad(dy, w, n, var, gamma, dx, batch, w, scratch, w, d_gamma, d_beta);
}
#endif

#ifdef SOPHIA_WANT_lstm_bn_cell
/* One batch-normalised LSTM frame (PEEPHOLE, CLOCK, POPULATION). a = h_prev W_h [B][4i] is
 * normalised over the batch (n_h [B][4i] kept, statistics mean_h, var_h [R][4i]), then
 * becomes the activated gates of gamma_h n_h + xa + bias; the new cell c_new [B][i] is
 * normalised (n_c, mean_c, var_c [R][i]) before its tanh: h_new = sigma(o) tanh(gamma_c n_c
 * + beta_c). c, h [B][i]: the states after the clock's blend with k [B][i] (without it
 * c_new, h_new may be c, h). scratch [3][4i]. */
EXPORT void sophia_lstm_bn_cell(real *a, const real *xa, const real *bias, const real *h_prev, const real *c_prev,
                                const real *peep, const real *gamma_h, const real *gamma_c, const real *beta_c,
                                const real *k, real *mean_h, real *var_h, real *n_h, real *mean_c, real *var_c,
                                real *n_c, real *c_new, real *h_new, real *c, real *h, double *scratch, idx batch,
                                idx i, real one)
{
    const idx g = 4 * i;
    (void)one;
    if (!POPULATION)
        bn_stats(a, batch, g, g, mean_h, var_h, scratch, g);
    bn_normalise(a, batch, g, mean_h, var_h, POPULATION, n_h, scratch, g);
    for (idx b = 0; b < batch; b++) {
        real *ab = a + b * g;
        const real *xb = xa + b * g, *nb = n_h + b * g;
        IVDEP for (idx q = 0; q < g; q++)
            ab[q] = gamma_h[q] * nb[q] + xb[q] + bias[q];
        lstm_new_cell(ab, c_prev + b * i, c_new + b * i, peep, i, PEEPHOLE);
    }
    if (!POPULATION)
        bn_stats(c_new, batch, i, i, mean_c, var_c, scratch, g);
    bn_normalise(c_new, batch, i, mean_c, var_c, POPULATION, n_c, scratch, g);
    bn_scale(n_c, gamma_c, beta_c, h_new, batch, i);                /* h_new holds the norm's y */
    for (idx b = 0; b < batch; b++) {
        real *s_o = a + b * g + 2 * i, *hn = h_new + b * i;
        const real *cn = c_new + b * i;
        lstm_output_gate(s_o, cn, peep, i, PEEPHOLE);
        IVDEP for (idx j = 0; j < i; j++)
            hn[j] = s_o[j] * tanh_(hn[j]);
        if (CLOCK) {
            blend(k + b * i, cn, c_prev + b * i, c + b * i, i);
            blend(k + b * i, hn, h_prev + b * i, h + b * i, i);
        }
    }
}
#endif

#ifdef SOPHIA_WANT_lstm_bn_cell
/* Backward of sophia_lstm_bn_cell (training) for one frame. From dh + dh_out and dc +
 * dc_out: d [B][4i] = the gradient of the pre-activations (= of xa; summed into db), d_ha
 * [B][4i] = of h_prev W_h before its norm, dk [B][i] = of the clock's openness; d_peep [3i],
 * d_gamma_h, d_beta_h [4i], d_gamma_c, d_beta_c [i] summed (the h path has no beta:
 * d_beta_h is a scratch sum). dc becomes the gradient of the entering c, dh that of the
 * entering h by the clock's direct path: the caller adds d_ha W_h^T. */
EXPORT void sophia_lstm_bn_cell_grad(real *dh, real *dc, const real *dh_out, const real *dc_out, const real *a,
                                     const real *c_new, const real *h_new, const real *h_in, const real *c_in,
                                     const real *n_h, const real *var_h, const real *n_c, const real *var_c,
                                     const real *peep, const real *gamma_h, const real *gamma_c,
                                     const real *beta_c, const real *k, real *d, real *d_ha, real *dk,
                                     double *scratch, double *db, double *d_peep, double *d_gamma_h,
                                     double *d_beta_h, double *d_gamma_c, double *d_beta_c, idx batch, idx i,
                                     real one)
{
    const idx g = 4 * i;
    (void)one;
    for (idx b = 0; b < batch; b++) {
        const real *ab = a + b * g, *cn = c_new + b * i, *hn = h_new + b * i;
        real *db_ = d + b * g, *d_i = db_, *d_o = db_ + 2 * i, *d_g = db_ + 3 * i;
        /* d_i holds the gradient of c_new until lstm_gates_grad; d_g that of the cell norm's y */
        lstm_clock_grad(dh + b * i, dc + b * i, dh_out + b * i, dc_out + b * i, hn, cn, h_in + b * i, c_in + b * i,
                        k + b * i, dk + b * i, d_o, d_i, i, CLOCK);
        lstm_normed_output_grad(ab + 2 * i, n_c + b * i, gamma_c, beta_c, d_o, d_g, i);
        if (PEEPHOLE)
            peephole_output_grad(d_o, cn, d_i, peep, d_peep, i);
    }
    bn_grad(d + 3 * i, g, n_c, var_c, gamma_c, d + 3 * i, batch, i, scratch, g, d_gamma_c, d_beta_c);
    for (idx b = 0; b < batch; b++) {
        const real *ab = a + b * g, *cib = c_in + b * i;
        real *db_ = d + b * g, *dcb = dc + b * i, *d_i = db_, *d_f = db_ + i, *d_g = db_ + 3 * i;
        lstm_gates_grad(ab, cib, d_i, d_f, d_g, d_g, dcb, i);   /* the new cell's gradient: d i + d y */
        if (PEEPHOLE)
            peephole_input_grad(d_i, d_f, cib, dcb, peep, d_peep, i);
        add_into(db, db_, g);
    }
    bn_grad(d, g, n_h, var_h, gamma_h, d_ha, batch, g, scratch, g, d_gamma_h, d_beta_h);
}
#endif

#ifdef SOPHIA_WANT_gru_bn_cell
/* One batch-normalised GRU frame (CLOCK, POPULATION): ha = h_prev W_h [B][3i] normalised
 * over the batch in place (gamma_h n_h, n_h [B][3i] kept, statistics mean_h, var_h [R][3i]),
 * then the GRU cell (gru_rows, the clock gate with CLOCK). scratch [3][3i]. */
EXPORT void sophia_gru_bn_cell(real *ha, const real *xa, const real *bias, const real *h_prev, const real *gamma_h,
                               const real *k, real *mean_h, real *var_h, real *n_h, real *a, real *hn, real *h_new,
                               real *h, double *scratch, idx batch, idx i, real one)
{
    const idx g = 3 * i;
    (void)one;
    if (!POPULATION)
        bn_stats(ha, batch, g, g, mean_h, var_h, scratch, g);
    bn_normalise(ha, batch, g, mean_h, var_h, POPULATION, n_h, scratch, g);
    for (idx b = 0; b < batch; b++)
        IVDEP for (idx q = 0; q < g; q++)
            ha[b * g + q] = gamma_h[q] * n_h[b * g + q];
    gru_rows(ha, xa, bias, h_prev, NULL, NULL, k, NULL, NULL, a, hn, h_new, h, batch, i, 0, CLOCK);
}
#endif

#ifdef SOPHIA_WANT_gru_bn_cell
/* Backward of sophia_gru_bn_cell (training) for one frame: that of gru_rows, then d_ha
 * [B][3i] through the norm (the gradient of h_prev W_h before it); d_gamma_h, d_beta_h [3i]
 * summed (the h path has no beta: d_beta_h is a scratch sum). */
EXPORT void sophia_gru_bn_cell_grad(real *dh, const real *dh_out, const real *a, const real *h_in, const real *hn,
                                    const real *h_new, const real *n_h, const real *var_h, const real *gamma_h,
                                    const real *k, real *d, real *d_ha, real *dk, double *scratch, double *db,
                                    double *d_gamma_h, double *d_beta_h, idx batch, idx i, real one)
{
    const idx g = 3 * i;
    (void)one;
    gru_rows_grad(dh, dh_out, a, h_in, hn, h_new, NULL, NULL, NULL, k, d, d_ha, dk, db, NULL, NULL, batch, i, 0,
                  CLOCK);
    bn_grad(d_ha, g, n_h, var_h, gamma_h, d_ha, batch, g, scratch, g, d_gamma_h, d_beta_h);
}
#endif
