// Emulation stand-in for the CUDA runtime header (see ../lkemu.h).
#pragma once
#include "../lkemu.h"
