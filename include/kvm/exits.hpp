#pragma once
/// \file
/// Every `kvm_run` decoder: the architecture-neutral exits
/// (kvm/exits_common.hpp) and each architecture's own
/// (`exit_decoder<arch::A, kvm::run_view>` for x86_64, aarch64 and riscv64).
/// A HAL whose exit record is `kvm::run_view` includes this header.

#include <kvm/exits_aarch64.hpp>
#include <kvm/exits_common.hpp>
#include <kvm/exits_riscv64.hpp>
#include <kvm/exits_x86_64.hpp>
#include <kvm/run.hpp>
