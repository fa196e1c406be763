# The model's matrix kernels for microgpt.py's width (16 inputs, or fc2's [16][64]), unrolled.
# Every float that MicroPython reads out of an array('f') or computes is a new heap object, so
# each kernel holds a 16-float vector in locals and reads each weight once; the rolled loop in
# each comment is the same arithmetic in the same order. Any other width: kernels_any.py.
import micropython


@micropython.native
def matvec16(w, k, nout, x, xo, y, yo):
    # y[yo:yo+nout] = W x for the [nout][16] matrix at w[k:]. The 16 inputs sit in locals, so a
    # product reads one float from an array, not two. Rolled:
    #   for i in range(nout): y[yo + i] = sum(w[k + 16 * i + j] * x[xo + j] for j in range(16))
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
        x[xo], x[xo + 1], x[xo + 2], x[xo + 3], x[xo + 4], x[xo + 5], x[xo + 6], x[xo + 7],
        x[xo + 8], x[xo + 9], x[xo + 10], x[xo + 11], x[xo + 12], x[xo + 13], x[xo + 14], x[xo + 15])
    for i in range(yo, yo + nout):
        y[i] = (w[k] * x0 + w[k + 1] * x1 + w[k + 2] * x2 + w[k + 3] * x3 + w[k + 4] * x4
                + w[k + 5] * x5 + w[k + 6] * x6 + w[k + 7] * x7 + w[k + 8] * x8 + w[k + 9] * x9
                + w[k + 10] * x10 + w[k + 11] * x11 + w[k + 12] * x12 + w[k + 13] * x13
                + w[k + 14] * x14 + w[k + 15] * x15)
        k += 16


@micropython.native
def linear16_backward(w, g, k, nout, x, xo, dy, dyo, dx, dxo):
    # For y = W x with 16 inputs: G += dy x^T and dx += W^T dy, in one pass over the matrix, the
    # 16 sums of dx in locals. Rolled, for each row i with d = dy[dyo + i] != 0 and j < 16:
    #   g[k + 16 * i + j] += d * x[xo + j];  dx[dxo + j] += w[k + 16 * i + j] * d
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
        x[xo], x[xo + 1], x[xo + 2], x[xo + 3], x[xo + 4], x[xo + 5], x[xo + 6], x[xo + 7],
        x[xo + 8], x[xo + 9], x[xo + 10], x[xo + 11], x[xo + 12], x[xo + 13], x[xo + 14], x[xo + 15])
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = d9 = d10 = d11 = d12 = d13 = d14 = d15 = 0.0
    for i in range(dyo, dyo + nout):
        d = dy[i]
        if d != 0.0:  # ReLU leaves about half of fc1's rows without gradient
            g[k] += d * x0
            g[k + 1] += d * x1
            g[k + 2] += d * x2
            g[k + 3] += d * x3
            g[k + 4] += d * x4
            g[k + 5] += d * x5
            g[k + 6] += d * x6
            g[k + 7] += d * x7
            g[k + 8] += d * x8
            g[k + 9] += d * x9
            g[k + 10] += d * x10
            g[k + 11] += d * x11
            g[k + 12] += d * x12
            g[k + 13] += d * x13
            g[k + 14] += d * x14
            g[k + 15] += d * x15
            d0 += w[k] * d
            d1 += w[k + 1] * d
            d2 += w[k + 2] * d
            d3 += w[k + 3] * d
            d4 += w[k + 4] * d
            d5 += w[k + 5] * d
            d6 += w[k + 6] * d
            d7 += w[k + 7] * d
            d8 += w[k + 8] * d
            d9 += w[k + 9] * d
            d10 += w[k + 10] * d
            d11 += w[k + 11] * d
            d12 += w[k + 12] * d
            d13 += w[k + 13] * d
            d14 += w[k + 14] * d
            d15 += w[k + 15] * d
        k += 16
    dx[dxo] += d0
    dx[dxo + 1] += d1
    dx[dxo + 2] += d2
    dx[dxo + 3] += d3
    dx[dxo + 4] += d4
    dx[dxo + 5] += d5
    dx[dxo + 6] += d6
    dx[dxo + 7] += d7
    dx[dxo + 8] += d8
    dx[dxo + 9] += d9
    dx[dxo + 10] += d10
    dx[dxo + 11] += d11
    dx[dxo + 12] += d12
    dx[dxo + 13] += d13
    dx[dxo + 14] += d14
    dx[dxo + 15] += d15


@micropython.native
def fc2_forward16(w, k, h, y):
    # y = W h for the [16][64] matrix at w[k:], skipping ReLU's zeros (about half of h): each
    # sum still adds the same nonzero terms in the same order; the 16 sums sit in locals. Rolled:
    #   for i in range(16): y[i] = sum(w[k + 64 * i + j] * h[j] for j in range(64) if h[j] != 0)
    y0 = y1 = y2 = y3 = y4 = y5 = y6 = y7 = y8 = y9 = y10 = y11 = y12 = y13 = y14 = y15 = 0.0
    for j in range(64):
        hj = h[j]
        if hj != 0.0:
            c = k + j
            y0 += w[c] * hj
            y1 += w[c + 64] * hj
            y2 += w[c + 128] * hj
            y3 += w[c + 192] * hj
            y4 += w[c + 256] * hj
            y5 += w[c + 320] * hj
            y6 += w[c + 384] * hj
            y7 += w[c + 448] * hj
            y8 += w[c + 512] * hj
            y9 += w[c + 576] * hj
            y10 += w[c + 640] * hj
            y11 += w[c + 704] * hj
            y12 += w[c + 768] * hj
            y13 += w[c + 832] * hj
            y14 += w[c + 896] * hj
            y15 += w[c + 960] * hj
    y[0] = y0
    y[1] = y1
    y[2] = y2
    y[3] = y3
    y[4] = y4
    y[5] = y5
    y[6] = y6
    y[7] = y7
    y[8] = y8
    y[9] = y9
    y[10] = y10
    y[11] = y11
    y[12] = y12
    y[13] = y13
    y[14] = y14
    y[15] = y15


@micropython.native
def fc2_backward16(w, g, k, h, dy, dh):
    # For y = W h with h = ReLU(.): G += dy h^T, and dh = W^T dy where h > 0 and 0 elsewhere
    # (ReLU's own gradient), never touching the columns of zeros; dy sits in locals. Rolled, for
    # each j with h[j] != 0:  g[k + 64 * i + j] += dy[i] * h[j] (i < 16);
    #   dh[j] = sum(w[k + 64 * i + j] * dy[i] for i in range(16))
    d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15 = (
        dy[0], dy[1], dy[2], dy[3], dy[4], dy[5], dy[6], dy[7],
        dy[8], dy[9], dy[10], dy[11], dy[12], dy[13], dy[14], dy[15])
    for j in range(64):
        hj = h[j]
        if hj != 0.0:
            c = k + j
            g[c] += d0 * hj
            g[c + 64] += d1 * hj
            g[c + 128] += d2 * hj
            g[c + 192] += d3 * hj
            g[c + 256] += d4 * hj
            g[c + 320] += d5 * hj
            g[c + 384] += d6 * hj
            g[c + 448] += d7 * hj
            g[c + 512] += d8 * hj
            g[c + 576] += d9 * hj
            g[c + 640] += d10 * hj
            g[c + 704] += d11 * hj
            g[c + 768] += d12 * hj
            g[c + 832] += d13 * hj
            g[c + 896] += d14 * hj
            g[c + 960] += d15 * hj
            dh[j] = (w[c] * d0 + w[c + 64] * d1 + w[c + 128] * d2 + w[c + 192] * d3
                     + w[c + 256] * d4 + w[c + 320] * d5 + w[c + 384] * d6 + w[c + 448] * d7
                     + w[c + 512] * d8 + w[c + 576] * d9 + w[c + 640] * d10 + w[c + 704] * d11
                     + w[c + 768] * d12 + w[c + 832] * d13 + w[c + 896] * d14 + w[c + 960] * d15)
        else:
            dh[j] = 0.0

