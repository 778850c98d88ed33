# Install rules for the C++ library (not used by the Python wheel build): the static library
# normcpp with every ISA level's kernels inside, the public headers, and a CMake package so that
# a program without Python can use it after `cmake --install`:
#
#   find_package(normcpp CONFIG REQUIRED)       # CMAKE_PREFIX_PATH=<install prefix>
#   target_link_libraries(app PRIVATE normcpp::normcpp)
#
# The package finds OpenMP again (find_dependency) when the library was built with it.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(NORMCPP_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/normcpp"
    CACHE STRING "Where normcppConfig.cmake is installed, relative to the prefix")

install(TARGETS normcpp
  EXPORT normcppTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/cpp/include/normcpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp")
install(EXPORT normcppTargets
  NAMESPACE normcpp::
  FILE normcppTargets.cmake
  DESTINATION ${NORMCPP_INSTALL_CMAKEDIR})

# Values the package config needs: did the library link OpenMP, and which ISA levels it has.
if(TARGET OpenMP::OpenMP_CXX)
  get_target_property(_normcpp_links normcpp INTERFACE_LINK_LIBRARIES)
  if("OpenMP::OpenMP_CXX" IN_LIST _normcpp_links)
    set(NORMCPP_PACKAGE_OPENMP ON)
  else()
    set(NORMCPP_PACKAGE_OPENMP OFF)
  endif()
else()
  set(NORMCPP_PACKAGE_OPENMP OFF)
endif()
set(NORMCPP_PACKAGE_ISAS "${NORMCPP_ISAS}")

configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/normcppConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/normcppConfig.cmake
  INSTALL_DESTINATION ${NORMCPP_INSTALL_CMAKEDIR})
write_basic_package_version_file(
  ${CMAKE_CURRENT_BINARY_DIR}/normcppConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/normcppConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/normcppConfigVersion.cmake
  DESTINATION ${NORMCPP_INSTALL_CMAKEDIR})
