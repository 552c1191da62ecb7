#pragma once
/// \file
/// Umbrella header for the architecture- and backend-neutral core.

#include <vcpu/basic_vcpu.hpp>
#include <vcpu/concepts.hpp>
#include <vcpu/config.hpp>
#include <vcpu/decoder.hpp>
#include <vcpu/dispatch.hpp>
#include <vcpu/exit_name.hpp>
#include <vcpu/exits.hpp>
#include <vcpu/init.hpp>
#include <vcpu/memory.hpp>
#include <vcpu/meta.hpp>
#include <vcpu/registers.hpp>
#include <vcpu/result.hpp>
#include <vcpu/version.hpp>
