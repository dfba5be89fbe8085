// Every verifier rule of kiln.overlap, kiln.stage and kiln.yield.
// RUN: kiln-opt %s -split-input-file -verify-diagnostics

#ep = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>
func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  // expected-error @+1 {{body must take the inputs of one micro-batch as block arguments}}
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>) {
  // expected-error @+1 {{has 1 inputs for 1 body arguments; expected 1 inputs per micro-batch, for 2 or more micro-batches}}
  kiln.overlap %x0 : (tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>, %x2: tensor<4x128xbf16>) {
  // expected-error @+1 {{has 3 inputs for 2 body arguments; expected 2 inputs per micro-batch, for 2 or more micro-batches}}
  kiln.overlap %x0, %x1, %x2 : (tensor<4x128xbf16>, tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>, %y: tensor<4x128xbf16>):
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<8x128xbf16>) {
  // expected-error @+1 {{input #1 (micro-batch 1) has type 'tensor<8x128xbf16>', but body argument #0 has type 'tensor<4x128xbf16>'}}
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<8x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{is not allowed directly in a 'kiln.overlap' body; put it in a 'kiln.stage'}}
    %y = arith.addf %x, %x : tensor<4x128xbf16>
    kiln.yield
  }
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>
func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>, %ids: tensor<4x1xi32>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-note @+1 {{first used here}}
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    // expected-error @+1 {{duplicate stage name 'norm'}}
    %b = kiln.stage "norm" communication %a : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      %t, %n, %s = kiln.moe_dispatch contiguous %in experts %ids {parallel = #ep}
          : (tensor<4x128xbf16>, tensor<4x1xi32>) -> (tensor<4x128xbf16>, tensor<3xi32>, tensor<4xi32>)
      kiln.yield %t : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  // expected-error @+1 {{needs at least one 'compute' and one 'communication' stage to overlap}}
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>
func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>, %ids: tensor<4x1xi32>) {
  // expected-error @+1 {{has 1 results; expected 1 yielded values x 2 micro-batches = 2}}
  %r = kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> (tensor<4x128xbf16>) {
  ^bb0(%x: tensor<4x128xbf16>):
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    %b = kiln.stage "dispatch" communication %a : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      %t, %n, %s = kiln.moe_dispatch contiguous %in experts %ids {parallel = #ep}
          : (tensor<4x128xbf16>, tensor<4x1xi32>) -> (tensor<4x128xbf16>, tensor<3xi32>, tensor<4xi32>)
      kiln.yield %t : tensor<4x128xbf16>
    }
    kiln.yield %b : tensor<4x128xbf16>
  }
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>
func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>, %ids: tensor<4x1xi32>) {
  // expected-error @+1 {{result #1 (micro-batch 1) has type 'tensor<4x128xf32>', but the body yields 'tensor<4x128xbf16>'}}
  %r:2 = kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> (tensor<4x128xbf16>, tensor<4x128xf32>) {
  ^bb0(%x: tensor<4x128xbf16>):
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    %b = kiln.stage "dispatch" communication %a : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      %t, %n, %s = kiln.moe_dispatch contiguous %in experts %ids {parallel = #ep}
          : (tensor<4x128xbf16>, tensor<4x1xi32>) -> (tensor<4x128xbf16>, tensor<3xi32>, tensor<4xi32>)
      kiln.yield %t : tensor<4x128xbf16>
    }
    kiln.yield %b : tensor<4x128xbf16>
  }
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>
func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>, %ids: tensor<4x1xi32>) {
  // expected-error @+1 {{body must end with 'kiln.yield'}}
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    %b = kiln.stage "dispatch" communication %a : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      %t, %n, %s = kiln.moe_dispatch contiguous %in experts %ids {parallel = #ep}
          : (tensor<4x128xbf16>, tensor<4x1xi32>) -> (tensor<4x128xbf16>, tensor<3xi32>, tensor<4xi32>)
      kiln.yield %t : tensor<4x128xbf16>
    }
    llvm.unreachable
  }
  return
}

// -----

//===----------------------------------------------------------------------===//
// kiln.stage
//===----------------------------------------------------------------------===//

func.func @f(%x: tensor<4x128xbf16>) {
  // expected-error @+1 {{expects parent op 'kiln.overlap'}}
  %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
  ^bb0(%in: tensor<4x128xbf16>):
    kiln.yield %in : tensor<4x128xbf16>
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{stage 'norm' has 1 inputs but its body takes 0 arguments}}
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
      %c = arith.constant dense<0.0> : tensor<4x128xbf16>
      kiln.yield %c : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{stage 'norm': input #0 has type 'tensor<4x128xbf16>', but body argument #0 has type 'tensor<4x128xf32>'}}
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xf32> {
    ^bb0(%in: tensor<4x128xf32>):
      kiln.yield %in : tensor<4x128xf32>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{stage 'norm' yields ('tensor<4x128xbf16>') but its results are ('tensor<4x128xf32>')}}
    %a = kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xf32> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{stage 'norm' must end with 'kiln.yield'}}
    kiln.stage "norm" compute %x : (tensor<4x128xbf16>) -> () {
    ^bb0(%in: tensor<4x128xbf16>):
      llvm.unreachable
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    %a = kiln.stage "first" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    %b = kiln.stage "second" compute : () -> tensor<4x128xbf16> {
      // Reaching back into the overlap body hides a dependence from the schedule.
      // expected-error @+1 {{in stage 'second' uses a value of the enclosing 'kiln.overlap' body; pass it as a stage input}}
      %s = arith.addf %a, %a : tensor<4x128xbf16>
      kiln.yield %s : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>
func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>, %ids: tensor<4x1xi32>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    %a = kiln.stage "dispatch" compute %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      // expected-error @+1 {{in compute stage 'dispatch'; dispatch and combine belong in a 'communication' stage}}
      %t, %n, %s = kiln.moe_dispatch contiguous %in experts %ids {parallel = #ep}
          : (tensor<4x128xbf16>, tensor<4x1xi32>) -> (tensor<4x128xbf16>, tensor<3xi32>, tensor<4xi32>)
      kiln.yield %t : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{communication stage 'wait' contains no 'kiln.moe_dispatch', 'kiln.moe_combine', 'kiln.moe_permute' or 'kiln.moe_unpermute'}}
    %a = kiln.stage "wait" communication %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x0: tensor<4x128xbf16>, %x1: tensor<4x128xbf16>) {
  kiln.overlap %x0, %x1 : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> () {
  ^bb0(%x: tensor<4x128xbf16>):
    // expected-error @+1 {{expected string or keyword containing one of the following enum values for attribute 'kind' [compute, communication]}}
    %a = kiln.stage "wait" memory %x : (tensor<4x128xbf16>) -> tensor<4x128xbf16> {
    ^bb0(%in: tensor<4x128xbf16>):
      kiln.yield %in : tensor<4x128xbf16>
    }
    kiln.yield
  }
  return
}

// -----

func.func @f(%x: tensor<4x128xbf16>) -> tensor<4x128xbf16> {
  // expected-error @+1 {{expects parent op to be one of 'kiln.overlap, kiln.stage'}}
  kiln.yield %x : tensor<4x128xbf16>
}
