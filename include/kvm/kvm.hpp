#pragma once
/// \file
/// Umbrella header for the Linux KVM HAL (`vcpu::kvm`): the Sys seam, the
/// ioctl table, fds, system / VM / vCPU / device handles, the HAL policy and the
/// x86-64 glue (on x86-64 hosts).

#include <kvm/device.hpp>
#include <kvm/fd.hpp>
#include <kvm/hal.hpp>
#include <kvm/ioctls.hpp>
#include <kvm/sys.hpp>
#include <kvm/system.hpp>
#include <kvm/traits.hpp>
#include <kvm/vcpu.hpp>
#include <kvm/vm.hpp>
#include <kvm/x86_64.hpp>
#include <kvm/x86_64_abi.hpp>
#include <kvm/x86_64_calls.hpp>
#include <kvm/x86_64_state.hpp>
