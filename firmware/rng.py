# The chip's own seeded PRNG (xorshift32), so a run draws the same numbers on every port
# (the VM, the ESP32) and the host can replay it when it samples from pulled weights.
import math


class Rng:
    def __init__(self, seed):
        # Spread small seeds over 32 bits; xorshift must never hold 0.
        self.state = (seed * 2654435761 + 0x6D2B79F5) & 0xFFFFFFFF or 1

    def next32(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def uniform(self):
        # 24 random bits: exact in float32 and float64 alike, in [0, 1).
        return (self.next32() >> 8) / 16777216.0

    def gauss(self, mu, sigma):
        # Box-Muller; 1 - uniform() is in (0, 1], so the log is finite.
        r = math.sqrt(-2.0 * math.log(1.0 - self.uniform()))
        return mu + sigma * r * math.cos(2.0 * math.pi * self.uniform())
