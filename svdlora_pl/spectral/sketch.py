"""Low-rank SVD of a matrix seen only through its products with test matrices: randomized range sketches.

The matrix is a weight gradient G = Σ_t δ_t·x_tᵀ (out×in), a sum over tokens t of the gradient δ_t at a Linear
layer's output and the layer's input x_t. It is never formed: :class:`GradientSketch` accumulates products from the
pairs (x_t, δ_t) as they stream by, in O((out + in)·k) memory for a sketch of size k, and returns the top-r SVD.

**One pass** (three sketches; Tropp, Yurtsever, Udell & Cevher, "Streaming low-rank matrix approximation with an
application to scientific simulation", SIAM J. Sci. Comput. 41(4), 2019, Algorithms 2 and 3): with Gaussian test
matrices Ω (in×k), Υ (k×out), Φ (s×out), Ψ (s×in), k = r + oversample and s = 2k + 1, accumulate the range sketch
Y = G·Ω = Σ_t δ_t·(x_tᵀΩ) (out×k), the co-range sketch X = Υ·G = Σ_t (Υδ_t)·x_tᵀ (k×in) and the core sketch
Z = Φ·G·Ψᵀ = Σ_t (Φδ_t)·(Ψx_t)ᵀ (s×s). Then Q = orth(Y), P = orth(Xᵀ), C = (Φ·Q)⁺·Z·((Ψ·P)⁺)ᵀ (k×k) and
G ≈ Q·C·Pᵀ, whose SVD is (Q·U_C)·Σ_C·(P·V_C)ᵀ. Memory k·(out + in) + s²; on the tiny model's gradients (8 batches,
r = 8) the rank-r error is within 1.07× of the optimum for every module at oversample 40, where the same memory in
the two-sketch method of their 2017 paper leaves up to 1.10×.

**p ≥ 2 passes** over the same data (randomized subspace iteration; Halko, Martinsson & Tropp, SIAM Review 53(2),
2011): pass 1 forms Y = G·Ω → Q₁ = orth(Y); each later pass multiplies G by the previous basis from the other side
(Qᵀ·G or G·Q), so p passes hold p − 2 power iterations; the last pass's product is decomposed directly. Each pass
costs one forward and backward over the batches.

Test matrices are drawn from a CPU generator seeded from the seed and their shape (:class:`TestMatrices`), so every
process of a distributed run draws the same ones, and all the layers of one shape share them: the guarantees hold for
each matrix separately, and a 7B model needs a few MB of test matrices in all instead of some per layer. The
accumulators are float32, whatever the model's dtype. The global RNG is untouched.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.spectral.factored import FactoredSVD


def seeded_gaussian(rows: int, cols: int, seed: int, *, device: torch.device | str = "cpu") -> Tensor:
    """A rows×cols standard Gaussian matrix (float32) from a CPU generator seeded with ``seed``; the same everywhere."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=generator).to(device)


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (a shape, a role), stable across runs and ranks."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class TestMatrices:
    """Seeded Gaussian test matrices, one per (role, shape), made on first use and shared by every sketch.

    Args:
        seed: The run's seed; each matrix's own seed derives from it, its role and its shape.
        device: Where the matrices live.
    """

    __test__ = False  # not a pytest class

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.seed, self.device = seed, torch.device(device)
        self.cache: dict[tuple[str, int, int], Tensor] = {}

    def get(self, role: str, rows: int, cols: int) -> Tensor:
        """The rows×cols matrix of ``role`` (``omega``, ``psi``)."""
        key = (role, rows, cols)
        if key not in self.cache:
            self.cache[key] = seeded_gaussian(rows, cols, derived_seed(self.seed, *key), device=self.device)
        return self.cache[key]

    def joined(self, first: tuple[str, int, int], second: tuple[str, int, int]) -> Tensor:
        """``[A | Bᵀ]`` of the matrices ``first`` = A (rows×a) and ``second`` = B (b×rows), given as (role, rows,
        cols) keys: one block, made once; the two are then kept as views into it (no second copy)."""
        key = ("joined", *first, *second)
        if key not in self.cache:
            block = torch.cat([self.get(*first), self.get(*second).mT], dim=1)
            split = first[2]
            self.cache[key] = block
            self.cache[first], self.cache[second] = block[:, :split], block[:, split:].mT
        return self.cache[key]

    def nbytes(self) -> int:
        """Bytes held by all the matrices made so far (views counted once, with their block)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self.cache.values()}
        return sum(storages.values())


Side = Literal["right", "left"]


class GradientSketch:
    """Streaming randomized SVD of one layer's gradient G = Σ_t δ_t·x_tᵀ (see the module docstring).

    Call :meth:`update` with each micro-batch's (x, δ) during pass ``pass_index``; between passes call
    :meth:`next_pass` (after summing :attr:`accumulators` over processes, if any); :meth:`svd` gives the top ``rank``
    triplets at the end.

    Args:
        out_features: Rows of G.
        in_features: Columns of G.
        rank: Singular triplets wanted.
        oversample: Extra sketch columns: k = rank + oversample (clamped to min(out, in)); the core is s = 2k + 1.
        passes: 1 (two-sided sketch) or more (subspace iteration).
        matrices: The shared test matrices (their device is the accumulators' device).
    """

    def __init__(
        self, out_features: int, in_features: int, rank: int, matrices: TestMatrices, oversample: int = 40,
        passes: int = 1,
    ) -> None:  # fmt: skip
        if rank < 1 or oversample < 0 or passes < 1:
            raise InputError(f"rank >= 1, oversample >= 0 and passes >= 1 needed, got {rank}, {oversample}, {passes}")
        self.out_features, self.in_features, self.rank = out_features, in_features, rank
        self.k = min(rank + oversample, out_features, in_features)
        self.s = min(2 * self.k + 1, out_features, in_features)
        self.passes, self.matrices, self.device = passes, matrices, matrices.device
        self.pass_index = 0
        self.basis: Tensor | None = None  # the previous pass's orthonormal basis (multi-pass)
        self.accumulators: dict[str, Tensor] = {}
        self._start_pass()

    # ------------------------------------------------------------------------------------------- the plan
    def side(self) -> Side:
        """Which product this pass accumulates: ``right`` (G·M, out×k) or ``left`` (Mᵀ·G, k×in)."""
        return "right" if self.pass_index % 2 == 0 else "left"

    def _start_pass(self) -> None:
        zeros = lambda *shape: torch.zeros(*shape, device=self.device)  # noqa: E731
        m, n, k, s = self.out_features, self.in_features, self.k, self.s
        if self.pass_index == 0:
            self.omega = self.matrices.get("omega", n, k)
            self.accumulators = {"Y": zeros(m, k)}
            if self.passes == 1:
                # [Ω | Ψᵀ] and [Υᵀ | Φᵀ]: two products per micro-batch instead of four; the parts are views of them
                self.right = self.matrices.joined(("omega", n, k), ("psi", s, n))
                self.left = self.matrices.joined(("upsilon_t", m, k), ("phi", s, m))
                self.omega, self.psi = self.right[:, :k], self.right[:, k:].mT
                self.upsilon, self.phi = self.left[:, :k].mT, self.left[:, k:].mT
                self.accumulators.update(X=zeros(k, n), Z=zeros(s, s))
        elif self.side() == "left":
            self.accumulators = {"Z": zeros(k, n)}
        else:
            self.accumulators = {"Y": zeros(m, k)}

    def update(self, x: Tensor, delta: Tensor) -> None:
        """Add one micro-batch: ``x`` (…, in) the layer's inputs, ``delta`` (…, out) the loss gradient at its outputs."""
        x = x.reshape(-1, self.in_features).float()
        delta = delta.reshape(-1, self.out_features).float()
        if self.passes == 1:  # the three sketches of one pass
            k = self.k
            xr, dl = x @ self.right, delta @ self.left  # [xΩ | xΨᵀ], [δΥᵀ | δΦᵀ]
            self.accumulators["Y"].addmm_(delta.mT, xr[:, :k])  # Σ δ_t (x_tᵀ Ω)
            self.accumulators["X"].addmm_(dl[:, :k].mT, x)  # Σ (Υ δ_t) x_tᵀ
            self.accumulators["Z"].addmm_(dl[:, k:].mT, xr[:, k:])  # Σ (Φ δ_t)(Ψ x_t)ᵀ
        elif self.side() == "right":
            right = self.omega if self.pass_index == 0 else self.basis
            self.accumulators["Y"].addmm_(delta.mT, x @ right)  # Σ δ_t (x_tᵀ M)
        else:
            self.accumulators["Z"].addmm_((delta @ self.basis).mT, x)  # Σ (Mᵀ δ_t) x_tᵀ

    def next_pass(self, scale: float = 1.0) -> None:
        """Close the current pass (its products multiplied by ``scale``, e.g. 1 / batches) and start the next one."""
        if self.pass_index + 1 >= self.passes:
            raise RuntimeError("all passes are done: call svd()")
        product = self.accumulators["Y"] if self.side() == "right" else self.accumulators["Z"].mT
        self.basis = torch.linalg.qr(product * scale).Q  # out×k after a right pass, in×k after a left one
        self.pass_index += 1
        self._start_pass()

    def svd(self, scale: float = 1.0) -> FactoredSVD:
        """The top-``rank`` SVD of ``scale``·G from the finished last pass (float64)."""
        acc = {name: value.double() * scale for name, value in self.accumulators.items()}
        if self.passes == 1:  # G ≈ Q·C·Pᵀ, C = (Φ·Q)⁺·Z·((Ψ·P)⁺)ᵀ
            Q, P = torch.linalg.qr(acc["Y"]).Q, torch.linalg.qr(acc["X"].mT).Q
            C = torch.linalg.lstsq(self.phi.double() @ Q, acc["Z"]).solution  # k×s
            C = torch.linalg.lstsq(self.psi.double() @ P, C.mT).solution.mT  # k×k
            U_c, S, Vh_c = torch.linalg.svd(C)
            U, V = Q @ U_c, P @ Vh_c.mT
        elif self.side() == "left":  # Z = Qᵀ·G with Q the previous left basis: G ≈ Q·Z
            U_z, S, Vh = torch.linalg.svd(acc["Z"], full_matrices=False)
            U, V = self.basis.double() @ U_z, Vh.mT
        else:  # Y = G·Q with Q the previous right basis: G ≈ Y·Qᵀ
            U, S, Vh_y = torch.linalg.svd(acc["Y"], full_matrices=False)
            V = self.basis.double() @ Vh_y.mT
        r = min(self.rank, S.numel())
        return FactoredSVD(U[:, :r].contiguous(), S[:r].contiguous(), V[:, :r].contiguous())

    def nbytes(self) -> int:
        """Bytes held by this sketch: its accumulators and basis (the shared test matrices are counted apart)."""
        tensors = [*self.accumulators.values(), self.basis]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @staticmethod
    def floats(out_features: int, in_features: int, rank: int, oversample: int = 40, passes: int = 1) -> int:
        """Accumulator floats of a sketch of that shape (without the shared test matrices)."""
        k = min(rank + oversample, out_features, in_features)
        s = min(2 * k + 1, out_features, in_features)
        return k * (out_features + in_features) + (s * s if passes == 1 else 0)

    @staticmethod
    def work(out_features: int, in_features: int, rank: int, oversample: int = 40, passes: int = 1) -> int:
        """Multiply-adds per token of :meth:`update`, over all passes: (out + in)·(2k + s) + s² in one pass, else
        (out + in)·k per pass."""
        k = min(rank + oversample, out_features, in_features)
        s = min(2 * k + 1, out_features, in_features)
        if passes == 1:
            return (out_features + in_features) * (2 * k + s) + s * s
        return (out_features + in_features) * k * passes


def holds_dense(out_features: int, in_features: int, rank: int, oversample: int = 40, passes: int = 1) -> bool:
    """Whether a layer's gradient is better held whole (:class:`DenseGradient`, exact) than sketched.

    True where the dense gradient (out·in floats, out·in multiply-adds per token) needs no more memory than the sketch
    or no more arithmetic (:meth:`GradientSketch.work`). In the second case its memory is still at most (2k + s)/k ≈
    4 times the sketch's (``passes`` times for a multi-pass sketch). Small layers (the tiny model's, where
    k = r + 40 is close to their width) are held whole; Qwen2.5-7B's layers are all sketched.
    """
    dense = out_features * in_features
    return dense <= GradientSketch.floats(out_features, in_features, rank, oversample, passes) or (
        dense <= GradientSketch.work(out_features, in_features, rank, oversample, passes)
    )


class DenseGradient:
    """A layer's gradient held whole (out×in) and decomposed exactly: the interface of :class:`GradientSketch`.

    For the exact estimator, and for a layer where :func:`holds_dense` (small layers: exact there, at no more memory
    or arithmetic than the sketch, or either). One pass; later passes add nothing.

    Args:
        out_features: Rows of G.
        in_features: Columns of G.
        rank: Singular triplets wanted.
        dtype: Accumulation dtype (float32; float64 for a float64 model).
        device: Where the gradient lives.
    """

    def __init__(
        self, out_features: int, in_features: int, rank: int, dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        self.out_features, self.in_features, self.rank = out_features, in_features, rank
        self.accumulators = {"G": torch.zeros(out_features, in_features, dtype=dtype, device=device)}
        self.complete = False

    def update(self, x: Tensor, delta: Tensor) -> None:
        """Add one micro-batch's Σ δ_t·x_tᵀ (ignored once the first pass is complete)."""
        if not self.complete:
            G = self.accumulators["G"]
            G.addmm_(delta.reshape(-1, self.out_features).to(G.dtype).mT, x.reshape(-1, self.in_features).to(G.dtype))

    def next_pass(self, scale: float = 1.0) -> None:
        """The gradient is complete after one pass."""
        self.complete = True

    def gradient(self, scale: float = 1.0) -> Tensor:
        """``scale``·G."""
        return self.accumulators["G"] * scale

    def svd(self, scale: float = 1.0) -> FactoredSVD:
        """The top-``rank`` SVD of ``scale``·G (exact, in G's dtype)."""
        from svdlora_pl.spectral.dense import dense_svd

        return dense_svd(self.gradient(scale), self.rank)

    def nbytes(self) -> int:
        G = self.accumulators["G"]
        return G.numel() * G.element_size()
