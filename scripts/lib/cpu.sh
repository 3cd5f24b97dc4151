# Sourced by the scripts that print speed figures (and by train-shakespeare.sh for its
# expected time): the CPU model and its SIMD class, since every speed figure must name them.
#
#   source scripts/lib/cpu.sh
#   echo "CPU: $cpu_model ($cpu_simd, $(nproc) cores)"
#
# cpu_simd is AVX-512 when the CPU has AVX-512 F, else AVX2 (with FMA), else "no AVX2".

cpu_model="$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
if grep -qw avx512f /proc/cpuinfo; then
    cpu_simd=AVX-512
elif grep -qw avx2 /proc/cpuinfo; then
    cpu_simd=AVX2
else
    cpu_simd="no AVX2"
fi
